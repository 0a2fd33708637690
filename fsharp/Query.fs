/// query: a key-value engine and its facades over RFC 12/CHP (examples/query/PROTOCOL.md).
///
/// The engine combines three patterns on three sockets: ROUTER answers snapshot requests, XPUB
/// publishes updates, SUB collects writes; a fourth socket, SUB, takes ticks from example 2's
/// publisher. A facade asks for snapshots on a DEALER, follows updates on a SUB and writes on an XPUB.
module Btb.Query

open System
open System.Buffers.Binary
open System.Collections.Generic
open System.Text
open System.Text.RegularExpressions
open Argu
open NetMQ
open NetMQ.Sockets
open Btb.Contract

/// [max size] ZMQ_MAXMSGSIZE on every socket, set before bind or connect: the largest legal frame is
/// a 256-byte value; between 257 and 1024 bytes it reaches us and is reported, above that NetMQ drops
/// it with the connection.
let MaxMessage = 1024L
let MaxValue = 256
let MaxFrames = 7 // frames kept of a message (5, a routing id, one to tell "more"); the rest are dropped
// The commands, in frame 0: none starts with /, so none can be mistaken for a key.
let HUGZ, ICANHAZ, KTHXBAI = "HUGZ"B, "ICANHAZ?"B, "KTHXBAI"B

// Keys, subtrees and properties are checked as text of one char per byte (Latin-1): a byte above
// 0x7E matches none of these classes, and \z (not $) lets no trailing newline through.
let KeyPattern = Regex(@"\A(/[A-Za-z0-9._-]+)+\z")
let SubtreePattern = Regex(@"\A(/[A-Za-z0-9._-]+)+/\z")
let PropertiesPattern = Regex(@"\A(([A-Za-z0-9_-]{1,32})=([\x20-\x7e]*)\n)*\z")
let TtlPattern = Regex(@"\A[1-9][0-9]{0,4}\z")

let text (data: byte[]) = Encoding.Latin1.GetString data
let bytesOf (value: string) = Encoding.Latin1.GetBytes value
let startsWith (prefix: string) (value: string) = value.StartsWith(prefix, StringComparison.Ordinal)

// --- command line ----------------------------------------------------------------------------

type EngineArgs =
    | Snapshot of endpoint: string
    | Updates of endpoint: string
    | Collector of endpoint: string
    | Ticks of endpoint: string
    | Name of name: string
    | Symbols of list: string
    | Hugz of ms: int
    | Max_Keys of count: int
    | Timeout of ms: int
    | Monitor of on_off: string

    interface IArgParserTemplate with
        member this.Usage =
            match this with
            | Snapshot _ -> "ROUTER endpoint to bind (default tcp://127.0.0.1:5556)"
            | Updates _ -> "XPUB endpoint to bind (default tcp://127.0.0.1:5557)"
            | Collector _ -> "collector SUB endpoint to bind (default tcp://127.0.0.1:5558)"
            | Ticks _ -> "a ticker publisher to connect to; empty: no ticks (default empty)"
            | Name _ -> "the @name topic for the ticker publisher (default engine)"
            | Symbols _ -> "comma-separated symbols to subscribe to (default AAPL,GOOG,GOOGL,MSFT,IBM)"
            | Hugz _ -> "time between HUGZ, whatever else is published, in ms (default 1000)"
            | Max_Keys _ -> "the most keys the map holds (default 10000)"
            | Timeout _ -> "longest run in ms, 0 for no limit (default 0)"
            | Monitor _ -> "on: report every socket's connection events (default off)"

type FacadeArgs =
    | Snapshot of endpoint: string
    | Updates of endpoint: string
    | Collector of endpoint: string
    | [<Mandatory>] Name of name: string
    | [<Mandatory>] Subtrees of list: string
    | Count of updates: int
    | Writes of keys: int
    | Ttl of seconds: int
    | Silence of ms: int
    | Timeout of ms: int
    | Monitor of on_off: string

    interface IArgParserTemplate with
        member this.Usage =
            match this with
            | Snapshot _ -> "the engine's ROUTER endpoint (default tcp://127.0.0.1:5556)"
            | Updates _ -> "the engine's XPUB endpoint (default tcp://127.0.0.1:5557)"
            | Collector _ -> "the engine's collector endpoint (default tcp://127.0.0.1:5558)"
            | Name _ -> "1 to 32 of A-Z a-z 0-9 _ - (required)"
            | Subtrees _ -> "comma-separated subtrees like /prices/; all is the whole map (required)"
            | Count _ -> "KVPUBs to apply before done (default 100)"
            | Writes _ -> "keys to write, 0 for none (default 0)"
            | Ttl _ -> "the ttl of the even-numbered writes, 1 to 86400 s (default 1)"
            | Silence _ -> "nothing from the engine for this long: start over (default 3000)"
            | Timeout _ -> "longest run in ms, 0 for no limit (default 30000)"
            | Monitor _ -> "on: report every socket's connection events (default off)"

type DeriveArgs =
    | [<Mandatory>] Symbol of symbol: string
    | [<Mandatory>] Prices of hex_list: string
    | Sequence of sequence: uint64

    interface IArgParserTemplate with
        member this.Usage =
            match this with
            | Symbol _ -> "the ticks' symbol, 1 to 8 letters A-Z"
            | Prices _ -> "comma-separated prices, each the 8 bytes of a binary64 in hex"
            | Sequence _ -> "the map's last sequence before the first tick (default 0)"

[<RequireSubcommand>]
type QueryArgs =
    | [<CliPrefix(CliPrefix.None)>] Engine of ParseResults<EngineArgs>
    | [<CliPrefix(CliPrefix.None)>] Facade of ParseResults<FacadeArgs>
    | [<CliPrefix(CliPrefix.None)>] Derive of ParseResults<DeriveArgs>

    interface IArgParserTemplate with
        member this.Usage =
            match this with
            | Engine _ -> "keep the map, serve snapshots, publish updates"
            | Facade _ -> "mirror some subtrees of the engine's map, and write to it"
            | Derive _ -> "print the KVPUBs some ticks make (the test vectors)"

type EngineSettings =
    { Snapshot: string; Updates: string; Collector: string; Ticks: string; Name: string
      Symbols: string list; Hugz: int; MaxKeys: int; Timeout: int; Monitor: bool }

type FacadeSettings =
    { Snapshot: string; Updates: string; Collector: string; Name: string; Subtrees: string list
      Count: int; Writes: int; Ttl: int; Silence: int; Timeout: int; Monitor: bool }

type DeriveSettings = { Symbol: string; Prices: byte[] list; Sequence: uint64 }

let isKey (key: string) = 2 <= key.Length && key.Length <= 255 && KeyPattern.IsMatch key

let isSubtree (tree: string) = tree = "" || (tree.Length <= 255 && SubtreePattern.IsMatch tree)

let segment (value: string) =
    if not (Regex.IsMatch(value, @"\A[A-Za-z0-9_-]{1,32}\z")) then
        failwith "a facade name is 1 to 32 of A-Z a-z 0-9 _ -"
    value

/// Comma-separated subtrees: `all` is the whole map (the empty subtree); an empty item is an error.
let subtreeList (value: string) =
    let subtree (part: string) =
        if part = "all" then ""
        elif part <> "" && isSubtree part then part
        else failwithf "'%s' is not a subtree like /prices/ (or all)" part
    let trees = value.Split ',' |> Seq.map subtree |> List.ofSeq
    if List.distinct trees <> trees then failwith "a subtree is listed twice"
    trees

let ttlSeconds (seconds: int) =
    if seconds < 1 || seconds > 86400 then failwith "a ttl is 1 to 86400 seconds"
    seconds

let priceList (value: string) =
    let price (part: string) =
        match (try Convert.FromHexString part with :? FormatException -> [||]) with
        | bytes when bytes.Length = 8 -> bytes
        | _ -> failwith "prices are 8-byte binary64 values in hex"
    value.Split ',' |> Seq.map price |> List.ofSeq

let engineSettings (args: ParseResults<EngineArgs>) : EngineSettings =
    { Snapshot = args.GetResult(EngineArgs.Snapshot, "tcp://127.0.0.1:5556")
      Updates = args.GetResult(EngineArgs.Updates, "tcp://127.0.0.1:5557")
      Collector = args.GetResult(EngineArgs.Collector, "tcp://127.0.0.1:5558")
      Ticks = args.GetResult(Ticks, "")
      Name = args.TryPostProcessResult(EngineArgs.Name, name) |> Option.defaultValue "engine"
      Symbols =
        args.TryPostProcessResult(Symbols, Ticker.symbols)
        |> Option.defaultWith (fun () -> Ticker.symbols "AAPL,GOOG,GOOGL,MSFT,IBM")
      Hugz = args.TryPostProcessResult(Hugz, atLeast 1) |> Option.defaultValue 1000
      MaxKeys = args.TryPostProcessResult(Max_Keys, atLeast 1) |> Option.defaultValue 10000
      Timeout = args.TryPostProcessResult(EngineArgs.Timeout, atLeast 0) |> Option.defaultValue 0
      Monitor = args.TryPostProcessResult(EngineArgs.Monitor, onOff) |> Option.defaultValue false }

let facadeSettings (args: ParseResults<FacadeArgs>) : FacadeSettings =
    { Snapshot = args.GetResult(FacadeArgs.Snapshot, "tcp://127.0.0.1:5556")
      Updates = args.GetResult(FacadeArgs.Updates, "tcp://127.0.0.1:5557")
      Collector = args.GetResult(FacadeArgs.Collector, "tcp://127.0.0.1:5558")
      Name = args.PostProcessResult(FacadeArgs.Name, segment)
      Subtrees = args.PostProcessResult(Subtrees, subtreeList)
      Count = args.TryPostProcessResult(Count, atLeast 1) |> Option.defaultValue 100
      Writes = args.TryPostProcessResult(Writes, atLeast 0) |> Option.defaultValue 0
      Ttl = args.TryPostProcessResult(Ttl, ttlSeconds) |> Option.defaultValue 1
      Silence = args.TryPostProcessResult(Silence, atLeast 1) |> Option.defaultValue 3000
      Timeout = args.TryPostProcessResult(FacadeArgs.Timeout, atLeast 0) |> Option.defaultValue 30000
      Monitor = args.TryPostProcessResult(FacadeArgs.Monitor, onOff) |> Option.defaultValue false }

let deriveSettings (args: ParseResults<DeriveArgs>) : DeriveSettings =
    { Symbol = args.PostProcessResult(Symbol, Ticker.symbol)
      Prices = args.PostProcessResult(Prices, priceList)
      Sequence = args.GetResult(Sequence, 0UL) }

// --- the protocol's pieces -------------------------------------------------------------------

/// At most 32 bytes of what a peer sent, for a reason: printable ASCII as it is, the rest as \xNN.
let quote (data: byte[]) =
    let shown (b: byte) =
        if 0x20uy <= b && b <= 0x7Euy && b <> byte '\\' then string (char b) else $"\\x%02x{b}"
    "'" + String.Join("", Array.truncate 32 data |> Array.map shown) + "'"

/// A message for a reason: its frame sizes, and at most 32 bytes of its first frame.
let quoteFrames (frames: byte[] list) =
    let sizes = String.Join(", ", frames |> List.map (fun frame -> string frame.Length))
    let first = match frames with head :: _ -> quote head | [] -> quote [||]
    $"[{sizes}] bytes, beginning {first}"

let report (code: string) (reason: string) = emit "error" [ "code", box code; "reason", box reason ]

/// The `ttl` property in seconds, 0 for none, or None when the properties are not `name=value\n`
/// lines or hold a ttl that is not one decimal number of 1 to 86400.
let ttlOf (properties: byte[]) =
    let lines = PropertiesPattern.Match(text properties)
    if properties.Length > 255 || not lines.Success then None
    else
        let names, values = lines.Groups[2].Captures, lines.Groups[3].Captures
        match [ for i in 0 .. names.Count - 1 do if names[i].Value = "ttl" then values[i].Value ] with
        | [] -> Some 0
        | [ ttl ] when TtlPattern.IsMatch ttl && int ttl <= 86400 -> Some(int ttl)
        | _ -> None

/// A KVSYNC, KVPUB or KVSET, checked.
type Kv = { Key: string; Sequence: uint64; Uuid: byte[]; Properties: byte[]; Ttl: int; Value: byte[] }

/// The five frames as a Kv, or Error with why they are malformed.
let checkKv (frames: byte[] list) =
    match frames with
    | [ key; sequence; uuid; properties; value ] ->
        let ttl = ttlOf properties
        if not (isKey (text key)) then Error $"not a key: {quote key}"
        elif sequence.Length <> 8 then Error $"a sequence of {sequence.Length} bytes, not 8"
        elif uuid.Length <> 0 && uuid.Length <> 16 then Error $"a UUID of {uuid.Length} bytes, not 0 or 16"
        elif ttl.IsNone then
            let lines = "name=value lines with at most one ttl of 1 to 86400"
            Error $"properties that are not {lines}: {quote properties}"
        elif value.Length > MaxValue then Error $"a value of {value.Length} bytes, more than {MaxValue}"
        else
            Ok { Key = text key; Sequence = BinaryPrimitives.ReadUInt64BigEndian sequence; Uuid = uuid
                 Properties = properties; Ttl = ttl.Value; Value = value }
    | _ ->
        let count = string frames.Length + (if frames.Length = MaxFrames then " or more" else "")
        Error $"expected 5 frames, got {count}"

/// 8 bytes, big-endian (network order).
let seq8 (number: uint64) = Ticker.frame8 (fun f -> BinaryPrimitives.WriteUInt64BigEndian(f, number))

/// The next message, read frame by frame without waiting: at most MaxFrames frames are kept
/// (the rest are read and dropped), so no message can make us allocate without bound. None if
/// there was nothing after all (a poll's PollIn is a hint, not a promise).
let receiveMessage (socket: NetMQSocket) =
    let mutable frame: byte[] = null
    let mutable more = false
    if not (socket.TryReceiveFrameBytes(TimeSpan.Zero, &frame, &more)) then None
    else
        let frames = ResizeArray [ frame ]
        // [multipart] A message arrives whole or not at all: once its first frame is in, so are the
        // others, and reading them cannot wait. How many there are is the peer's choice: the count
        // is checked by whoever reads the frames (checkKv, OnIcanhaz...), never assumed.
        while more do
            frame <- socket.ReceiveFrameBytes(&more)
            if frames.Count < MaxFrames then frames.Add frame
        Some(List.ofSeq frames)

// --- the map fed by ticks --------------------------------------------------------------------

/// floor(price x 100 + 0.5): two binary64 operations (.NET never fuses them into one FMA) and an
/// exact floor; None for a price that is not finite, is negative or is above 10^9.
let tickCents (price: float) =
    if Double.IsFinite price && 0.0 <= price && price <= 1e9 then
        Some(int64 (Math.Floor(price * 100.0 + 0.5)))
    else
        None

let decimalText (cents: int64) = bytesOf $"{cents / 100L}.{cents % 100L:D2}"

/// The four derived keys of one tick and their new values; `stats` keeps, per symbol, the highest
/// and lowest price in cents and the number of ticks.
let derived (stats: Dictionary<string, int64 * int64 * int>) symbol cents =
    let high, low, count =
        match stats.TryGetValue symbol with
        | true, (high, low, count) -> max high cents, min low cents, count + 1
        | _ -> cents, cents, 1
    stats[symbol] <- (high, low, count)
    [ $"/prices/{symbol}", decimalText cents
      $"/stats/{symbol}/high", decimalText high
      $"/stats/{symbol}/low", decimalText low
      $"/stats/{symbol}/ticks", bytesOf (string count) ]

let runDerive (args: DeriveSettings) =
    let values = Dictionary<string, byte[]>()
    let stats = Dictionary()
    let mutable sequence = args.Sequence
    for price in args.Prices do
        match tickCents (BinaryPrimitives.ReadDoubleBigEndian price) with
        | None -> raise (Failure("malformed-tick", $"price {Ticker.hex price} cannot be cents"))
        | Some cents ->
            for key, value in derived stats args.Symbol cents do
                match values.TryGetValue key with
                | true, current when current = value -> () // only what changes is an update
                | _ ->
                    values[key] <- value
                    sequence <- sequence + 1UL
                    let frames = [ bytesOf key; seq8 sequence; [||]; [||]; value ]
                    emit "encoded" [ "frames", box (List.map Ticker.hex frames) ]
    emit "done" []

// --- engine ----------------------------------------------------------------------------------

/// A tick's frame 0: 1 to 8 letters A-Z, then the NUL.
let isTopic (frame: byte[]) =
    let last = frame.Length - 1
    last >= 1 && frame[last] = 0uy && Ticker.isSymbol (Encoding.ASCII.GetString frame[.. last - 1])

/// The map (key -> value, sequence), its expiries and its sockets' replies.
type Engine(snapshots: RouterSocket, updates: XPublisherSocket, maxKeys: int, symbols: string list) =
    let map = Dictionary<string, byte[] * uint64>()
    let expiries = Dictionary<string, int64>() // key -> when it expires, in monotonic ms
    let stats = Dictionary()
    let mutable sequence = 0UL
    let mutable served = 0
    let mutable abandoned = 0
    let mutable lastHugz = nowMs ()
    let uuid = System.Security.Cryptography.RandomNumberGenerator.GetBytes 16 // who we are: an engine started again draws another

    /// One update: the next sequence, the map, the KVPUB to every subscriber, the event.
    let update key (value: byte[]) cause uuid properties =
        sequence <- sequence + 1UL
        if value.Length > 0 then map[key] <- (value, sequence) else map.Remove key |> ignore
        expiries.Remove key |> ignore
        send updates [ bytesOf key; seq8 sequence; uuid; properties; value ] // XPUB never blocks
        emit "update" [ "sequence", box sequence; "key", box key
                        "value", box (Ticker.hex value); "cause", box cause ]

    // The RFC's HUGZ carries 0 and no UUID; ours our sequence (as the Guide's clonesrv) and our
    // UUID, so that a facade knows when the engine it hears is not the one it synced with.
    let hugz () =
        send updates [ HUGZ; seq8 sequence; uuid; [||]; [||] ]
        lastHugz <- nowMs ()

    /// Send to one peer through ROUTER, without waiting. With ROUTER_MANDATORY the routing id frame
    /// fails when the peer is gone (NetMQ throws) or its queue is full, at the send high-water mark
    /// (TrySend returns false): Some why, or None when the message went out.
    let sendTo (identity: byte[]) (frames: byte[] list) =
        try
            if snapshots.TrySendMultipartBytes(TimeSpan.Zero, identity :: frames :> seq<byte[]>) then None
            else Some "full"
        with :? HostUnreachableException -> Some "gone"

    member _.Sequence = sequence
    member _.Keys = map.Count
    member _.Served = served
    member _.Abandoned = abandoned
    member _.LastHugz = lastHugz
    member _.Hugz() = hugz ()

    member _.OnIcanhaz(frames: byte[] list) =
        match frames with
        | [ identity; command; tree ] when command = ICANHAZ && isSubtree (text tree) ->
            let subtree = text tree
            let keys = map.Keys |> Seq.filter (startsWith subtree) |> Seq.sort |> List.ofSeq
            let highest = keys |> List.fold (fun top key -> max top (snd map[key])) 0UL
            let kvsync key =
                let value, at = map[key]
                [ bytesOf key; seq8 at; [||]; [||]; value ]
            let messages = Seq.append (Seq.map kvsync keys) [ [ KTHXBAI; seq8 highest; [||]; [||]; tree ] ]
            // The first send that fails stops the snapshot: the facade never gets a KTHXBAI after holes.
            let failed = messages |> Seq.indexed |> Seq.tryPick (fun (sent, message) ->
                sendTo identity message |> Option.map (fun why -> sent, why))
            match failed with
            | Some(sent, why) ->
                abandoned <- abandoned + 1
                emit "abandoned" [ "subtree", box subtree; "keys", box sent; "why", box why ]
            | None ->
                served <- served + 1
                emit "snapshot" [ "subtree", box subtree; "keys", box keys.Length
                                  "sequence", box highest; "at", box sequence ]
        | _ ->
            report "malformed-icanhaz" $"not [ICANHAZ?, subtree]: {quoteFrames (List.truncate 3 frames.Tail)}"

    member _.OnKvset(frames: byte[] list) =
        match checkKv frames with
        | Error why -> report "malformed-kvset" why
        | Ok kv when kv.Value.Length > 0 && not (map.ContainsKey kv.Key) && map.Count >= maxKeys ->
            report "map-full" $"{quote frames.Head} would be key {maxKeys + 1}"
        | Ok kv ->
            update kv.Key kv.Value "kvset" kv.Uuid kv.Properties
            if kv.Ttl > 0 && kv.Value.Length > 0 then
                expiries[kv.Key] <- nowMs () + int64 kv.Ttl * 1000L

    /// A tick as examples/ticker/PROTOCOL.md has it: [symbol NUL, sequence, timestamp, price].
    member _.OnTick(frames: byte[] list) =
        match frames with
        | [ topic; _; _; price ] when isTopic topic && frames.Tail |> List.forall (fun f -> f.Length = 8) ->
            let symbol = Encoding.ASCII.GetString topic[.. topic.Length - 2]
            match tickCents (BinaryPrimitives.ReadDoubleBigEndian price) with
            | Some cents when List.contains symbol symbols ->
                for key, value in derived stats symbol cents do
                    match map.TryGetValue key with
                    | true, (current, _) when current = value -> ()
                    | _ -> update key value "tick" [||] [||]
            | _ ->
                let why = $"not subscribed, or price {Ticker.hex price} cannot be cents"
                report "malformed-tick" $"{symbol}: {why}"
        | _ -> report "malformed-tick" $"not a tick: {quoteFrames frames}"

    member _.OnSubscription(frame: byte[]) =
        if frame.Length = 0 || frame[0] > 1uy then
            report "malformed-subscription" $"not a subscription: {quote frame}"
        elif frame[0] = 1uy && startsWith (text frame[1..]) "HUGZ" then
            hugz () // a new subscriber learns at once that its subscriptions are in place

    /// Delete every key whose time has come, in order of expiry time, then key.
    member _.Expire(now: int64) =
        for _, key in [ for KeyValue(key, at) in expiries do if at <= now then at, key ] |> List.sort do
            update key [||] "expired" [||] [||]

    /// Milliseconds to the next HUGZ or expiry.
    member _.NextTimer(hugzMs: int) =
        let due = Seq.append [ lastHugz + int64 hugzMs ] expiries.Values |> Seq.min
        max 0L (due - nowMs ())

let runEngine (args: EngineSettings) =
    use stop = new StopSignal()
    let deadline = Deadline(args.Timeout)
    // [ROUTER] Every request arrives with the routing id of its peer in front, and every reply is
    // routed by the routing id we put in front; what it cannot route, ROUTER drops in silence.
    // MANDATORY: the send fails instead (NetMQ throws, or TrySend says no), and we know.
    use snapshots = new RouterSocket()
    snapshots.Options.RouterMandatory <- true
    // [HWM] The high-water mark bounds each peer's queue: at it PUB drops, PUSH and DEALER block (the
    // mute state), and this mandatory ROUTER refuses the send (`full`). Here it is room for a whole
    // snapshot per peer: the library learns that a peer has read its messages only in batches, so a
    // loop of sends would find 1000 (the default) "full" at once.
    snapshots.Options.SendHighWatermark <- min args.MaxKeys (Int32.MaxValue - 1) + 1
    // [XPUB] A PUB on the wire that hands us every subscription as a message (first byte 1 or 0);
    // verbose: repeated ones included, so that every subscription to HUGZ is answered.
    use updates = new XPublisherSocket()
    updates.Options.XPubVerbose <- true
    use collector = new SubscriberSocket() // the facades' writes: subscribed to everything
    collector.Subscribe ""
    use ticks = new SubscriberSocket() // used only with --ticks
    // [linger] 0 on every engine socket: closing drops what is still queued (updates, snapshots for
    // facades that will resync anyway), so a dead peer cannot hold up the exit.
    for socket in [ snapshots :> NetMQSocket; updates; collector; ticks ] do
        socket.Options.Linger <- TimeSpan.Zero
        socket.Options.MaxMsgSize <- MaxMessage
    use _ = SocketMonitor.watch snapshots "snapshot" args.Monitor // before the binds: `listening` too
    use _ = SocketMonitor.watch updates "updates" args.Monitor
    use _ = SocketMonitor.watch collector "collector" args.Monitor
    use _ = SocketMonitor.watch ticks "ticks" (args.Monitor && args.Ticks <> "") // only with --ticks
    endpoint "bind" snapshots.Bind args.Snapshot
    endpoint "bind" updates.Bind args.Updates
    endpoint "bind" collector.Bind args.Collector
    if args.Ticks <> "" then
        // Connected before it subscribes, as the ticker's subscriber (Ticker.runSubscriber says
        // why): its subscriptions then go out in the order made, the @name last.
        endpoint "connect" ticks.Connect args.Ticks
        for symbol in args.Symbols do // the symbols first, then the @name the publisher counts
            ticks.Subscribe(Ticker.topic symbol)
        ticks.Subscribe(utf8.GetBytes("@" + args.Name))
    emit "ready" [ "snapshot", box snapshots.Options.LastEndpoint; "updates", box updates.Options.LastEndpoint
                   "collector", box collector.Options.LastEndpoint ]

    let engine = Engine(snapshots, updates, args.MaxKeys, args.Symbols)
    let polled = [ snapshots :> NetMQSocket; updates; collector; if args.Ticks <> "" then ticks ]
    // [poll] The loop's five steps: the stop flag and the deadline; the wait, up to the next HUGZ or
    // expiry but a tenth of a second at most (.NET has no EINTR: no signal wakes NetMQ's poll); one
    // poll of all four sockets; one message from each ready socket, received without waiting (POLLIN
    // is a hint), in PROTOCOL.md's order, so that a flood on one delays the others by one message at
    // most; then the timers, expiries and HUGZ.
    while not stop.Raised do
        if deadline.Expired then
            raise (Failure("timeout", $"still serving after {args.Timeout} ms"))
        let ready = poll polled (deadline.Cap(min (engine.NextTimer args.Hugz) 100L))
        if ready.Has snapshots then receiveMessage snapshots |> Option.iter engine.OnIcanhaz
        // One frame at a time: each is one subscription (NetMQ's XPUB passes on a message's other
        // frames as they came).
        if ready.Has updates then receiveFrameIfReady updates |> Option.iter engine.OnSubscription
        if ready.Has collector then receiveMessage collector |> Option.iter engine.OnKvset
        if ready.Has ticks then receiveMessage ticks |> Option.iter engine.OnTick
        engine.Expire(nowMs ())
        if nowMs () - engine.LastHugz >= int64 args.Hugz then
            engine.Hugz() // every --hugz ms, busy or not: a facade that hears nothing knows we are gone
    emit "done" [ "sequence", box engine.Sequence; "keys", box engine.Keys
                  "snapshots", box engine.Served; "abandoned", box engine.Abandoned ]

// --- facade ----------------------------------------------------------------------------------

/// A KVSET of the facade's (sequence 8 zero bytes, empty UUID): the engine gives it a sequence.
let kvset (key: string) (properties: byte[]) (value: byte[]) = [ bytesOf key; seq8 0UL; [||]; properties; value ]

/// A HUGZ: the engine's keep-alive on the updates.
let isHugz (frames: byte[] list) = not frames.IsEmpty && frames.Head = HUGZ

/// The facade's map and what it still waits for; `emit` reports its events (the desk's query agent
/// sends them up its pipe instead of writing them).
type Facade(args: FacadeSettings, emit: string -> (string * obj) list -> unit) =
    let report (code: string) (reason: string) = emit "error" [ "code", box code; "reason", box reason ]
    let map = Dictionary<string, byte[]>()
    let waiting = ResizeArray<string>(args.Subtrees) // subtrees asked for, whose KTHXBAI is not in yet
    let watermark = Dictionary<string, uint64>() // subtree -> its KTHXBAI's sequence
    let syncedKeys = Dictionary<string, int>(args.Subtrees |> List.map (fun tree -> KeyValuePair(tree, 0)))
    let mutable first = 0UL // the first KVPUB applied and the last: the checker counts between them
    let mutable last = 0UL
    let mutable applied = 0
    let mutable discarded = 0
    let prefix = $"/facades/{args.Name}/"
    let seesOwn = args.Subtrees |> List.exists (fun tree -> startsWith tree prefix)
    // (key, value, ttl) of /facades/NAME/N = NAME/N for N = 1 .. --writes; the even ones have a ttl.
    let writes =
        [ for n in 1 .. args.Writes ->
              $"{prefix}{n}", bytesOf $"{args.Name}/{n}", (if n % 2 = 0 then args.Ttl else 0) ]
    let written = dict [ for key, value, _ in writes -> key, value ]
    let ttlKeys = [ for key, _, ttl in writes do if ttl > 0 then key ]
    let firstWrite = $"{prefix}1" // deleted once every write has come back
    let echoed, expired = HashSet<string>(), HashSet<string>()
    let mutable deleted = false
    let mutable deleteSent = false

    let set key (value: byte[]) =
        if value.Length > 0 then map[key] <- value else map.Remove key |> ignore

    member _.Waiting = List.ofSeq waiting
    member _.Map = map
    member _.First = first
    member _.Last = last
    member _.Applied = applied
    member _.Discarded = discarded
    member _.Writes = writes
    member _.AllEchoed = echoed.Count = writes.Length
    member _.FirstWrite = firstWrite
    member _.DeleteSent with get () = deleteSent and set sent = deleteSent <- sent

    member _.OnSnapshot(frames: byte[] list) =
        if frames.Head = KTHXBAI then
            match frames with
            | [ _; sequence; _; _; tree ] when sequence.Length = 8 && isSubtree (text tree) ->
                let subtree = text tree
                if waiting.Remove subtree then // matched by its subtree: nothing else says which request
                    watermark[subtree] <- BinaryPrimitives.ReadUInt64BigEndian sequence
                    emit "synced" [ "subtree", box subtree; "sequence", box watermark[subtree]
                                    "keys", box syncedKeys[subtree] ]
                else
                    report "unexpected-kthxbai" $"no request waits for subtree {quote tree}"
            | _ -> report "malformed-kthxbai" $"not [KTHXBAI, sequence, -, -, subtree]: {quoteFrames frames}"
        else
            match checkKv frames with
            | Error why -> report "malformed-kvsync" why
            | Ok kv when not (waiting |> Seq.exists (fun tree -> startsWith tree kv.Key)) ->
                report "malformed-kvsync" $"{quote frames.Head} is in no subtree still being sent"
            | Ok kv ->
                for tree in waiting do
                    if startsWith tree kv.Key then syncedKeys[tree] <- syncedKeys[tree] + 1
                set kv.Key kv.Value

    /// Apply a KVPUB if it is new: Some KVPUB when it was applied.
    member _.OnUpdate(frames: byte[] list) =
        if isHugz frames then None // a HUGZ is a keep-alive: the engine is there
        else
            match checkKv frames with
            | Error why -> report "malformed-kvpub" why; None
            | Ok kv ->
                match args.Subtrees |> List.filter (fun tree -> startsWith tree kv.Key) with
                | [] -> report "unexpected-key" $"{quote frames.Head} is in none of our subtrees"; None
                | trees ->
                    // The RFC's late-joiner rule: only what is newer than the snapshot, and than the
                    // last update.
                    let newest = List.max [ for tree in trees -> watermark[tree] ]
                    if kv.Sequence <= newest || kv.Sequence <= last then
                        discarded <- discarded + 1
                        None
                    else
                        set kv.Key kv.Value
                        if first = 0UL then first <- kv.Sequence
                        last <- kv.Sequence
                        applied <- applied + 1
                        match written.TryGetValue kv.Key with
                        | true, value when value = kv.Value -> echoed.Add kv.Key |> ignore
                        | true, _ when kv.Value.Length = 0 ->
                            if kv.Key = firstWrite && deleteSent then deleted <- true
                            elif echoed.Contains kv.Key then expired.Add kv.Key |> ignore
                        | _ -> ()
                        Some kv

    member _.Finished =
        if waiting.Count > 0 || applied < args.Count then false
        elif last <= Seq.fold max 0UL watermark.Values then false
        elif seesOwn && not writes.IsEmpty then
            echoed.Count = writes.Length && deleted && ttlKeys |> List.forall expired.Contains
        else true

/// The engine is gone or is a new one (PROTOCOL.md, "Restarts"): start over on new sockets.
exception Restarted of why: string * last: uint64

/// The facade's sockets, new and connected (step 1), each watched with --monitor on. Close stops
/// the monitors, then closes the sockets.
type FacadeSockets(args: FacadeSettings) =
    // [DEALER] Sends and receives freely, without REQ's lockstep and without an envelope of its own:
    // every ICANHAZ? goes out at once, and the replies come back as they come; only the subtree in a
    // KTHXBAI says which request it answers.
    let snapshot = new DealerSocket()
    let updates = new SubscriberSocket()
    // XPUB to the collector: a PUB that tells us when the collector's subscription has arrived.
    let collector = new XPublisherSocket() // used only with --writes
    do
        for socket in [ snapshot :> NetMQSocket; updates; collector ] do
            socket.Options.Linger <- TimeSpan.Zero
            socket.Options.MaxMsgSize <- MaxMessage
        // [linger] 1000 ms on the collector XPUB alone: closing it leaves our last write (a delete)
        // a second to go out; 0 on the others, whose queued messages nobody is owed.
        collector.Options.Linger <- TimeSpan.FromMilliseconds 1000.0
    let monitors =
        [ SocketMonitor.watch snapshot "snapshot" args.Monitor // before the connects: the first `connected` too
          SocketMonitor.watch updates "updates" args.Monitor
          SocketMonitor.watch collector "collector" (args.Monitor && args.Writes > 0) ] // only with --writes
    let mutable closed = false
    do
        // [SUB] A subscription is a prefix filter on frame 0: a subtree is one, and the SUB receives
        // nothing outside them (and HUGZ). It subscribes after its connect, on purpose: what a SUB
        // subscribes before connecting goes out in its trie's order (sorted by bytes) when the
        // connection starts, what it subscribes after, in the order made; HUGZ must come last.
        endpoint "connect" updates.Connect args.Updates
        for tree in args.Subtrees do
            updates.Subscribe(bytesOf tree)
        updates.Subscribe HUGZ // last: once a HUGZ arrives, every subscription before it is in place
        endpoint "connect" snapshot.Connect args.Snapshot
        if args.Writes > 0 then
            endpoint "connect" collector.Connect args.Collector

    member _.Updates = updates
    member _.Snapshot = snapshot
    member _.Collector = collector

    /// Close everything, once; `dropWrites` closes the collector with linger 0 too.
    member _.Close(dropWrites: bool) =
        if not closed then
            closed <- true
            if dropWrites then collector.Options.Linger <- TimeSpan.Zero
            for monitor in List.rev monitors do
                monitor.Dispose()
            for socket in [ collector :> NetMQSocket; snapshot; updates ] do
                socket.Dispose()

/// One session with one engine: steps 2 to 6 of the facade. Returns the finished facade, or raises
/// Restarted when the engine turns out to be gone or new.
let follow (args: FacadeSettings) (deadline: Deadline) (sockets: FacadeSockets) =
    let updates, snapshot, collector = sockets.Updates, sockets.Snapshot, sockets.Collector
    let facade = Facade(args, emit)
    let mutable seen = 0UL // the highest sequence read from the SUB: HUGZ, and KVPUBs applied or not
    let mutable engine: byte[] option = None // the UUID in the HUGZ that started the session (empty from an RFC server)
    /// Whether the SUB still hears the engine of this session: the same UUID in every HUGZ, and
    /// sequences that only rise (every update above the HUGZ before it, every HUGZ at least the
    /// updates before it). Anything else comes from another engine.
    let followEngine (frames: byte[] list) =
        if isHugz frames then
            let uuid, sequence =
                match frames with
                | [ _; sequence; uuid; _; _ ] when sequence.Length = 8 ->
                    uuid, BinaryPrimitives.ReadUInt64BigEndian sequence
                | _ -> [||], 0UL
            match engine with
            | None -> engine <- Some uuid
            | Some ours when ours <> uuid -> raise (Restarted("engine", seen))
            | Some _ -> ()
            // 0: an RFC server's HUGZ, which says nothing.
            if sequence <> 0UL && sequence < seen then raise (Restarted("sequence", seen))
            seen <- max seen sequence
        else
            match checkKv frames with
            | Ok kv ->
                if kv.Sequence <= seen then raise (Restarted("sequence", seen))
                seen <- kv.Sequence
            | Error _ -> ()
    // [slow joiner] Our subscriptions reach the engine some time after the connect, and an update
    // published before then is lost for us: asked for too early, a snapshot would miss it for good.
    // The engine answers every subscription to HUGZ with a HUGZ at once, and ours was the last: once
    // a HUGZ arrives, every subscription is in place. What comes before it is dropped (the snapshot
    // covers it).
    let mutable hugged = false
    while not hugged do
        if deadline.Expired then
            raise (Failure("timeout", $"no HUGZ from {args.Updates} within {args.Timeout} ms"))
        let ready = poll [ updates ] (deadline.Cap 100L)
        match (if ready.Has updates then receiveMessage updates else None) with
        | Some frames when isHugz frames ->
            followEngine frames // which engine, and its sequence now: every update after it is higher
            hugged <- true
        | _ -> ()

    // When the engine was last heard from: nothing for --silence ms means it is gone.
    let mutable heard = nowMs ()
    let silence = int64 args.Silence

    for tree in args.Subtrees do // all requests in flight at once on the one DEALER
        send snapshot [ ICANHAZ; bytesOf tree ]
    while not facade.Waiting.IsEmpty do // the SUB stays unread meanwhile: its updates wait, in order
        if deadline.Expired then
            raise (Failure("timeout", $"subtrees %A{facade.Waiting} never completed"))
        let ready = poll [ snapshot ] (deadline.Cap 100L)
        match (if ready.Has snapshot then receiveMessage snapshot else None) with
        | Some frames ->
            heard <- nowMs ()
            facade.OnSnapshot frames
        | None -> ()
        if nowMs () - heard >= silence then raise (Restarted("silence", seen))

    // [poll] The stream's loop, in five steps: the deadline; the wait (no timer of its own: a tenth
    // of a second, for the silence); one poll of every socket the facade reads; one message from
    // each ready socket, without waiting (POLLIN is a hint), in PROTOCOL.md's order, DEALER, SUB,
    // XPUB; then the timers: the silence, and the delete once every write has come back. .NET has
    // no EINTR to cut the poll short.
    let polled = [ snapshot :> NetMQSocket; updates; if args.Writes > 0 then collector ]
    let mutable collectorLive = false
    while not facade.Finished do
        if deadline.Expired then
            let reason = $"applied {facade.Applied} updates, up to {facade.Last}, and was not done"
            raise (Failure("timeout", reason))
        let ready = poll polled (deadline.Cap 100L)
        if ready.Has snapshot then
            match receiveMessage snapshot with
            | Some frames -> report "unexpected-snapshot" $"{quote frames.Head} after every KTHXBAI"
            | None -> ()
        if ready.Has updates then
            match receiveMessage updates with
            | Some frames ->
                heard <- nowMs ()
                followEngine frames
                facade.OnUpdate frames |> ignore
            | None -> ()
        if ready.Has collector then
            match receiveFrameIfReady collector with
            | Some [| 1uy |] when not collectorLive -> // the collector's subscription to everything
                collectorLive <- true
                for key, value, ttl in facade.Writes do
                    let properties = if ttl > 0 then bytesOf $"ttl={ttl}\n" else [||]
                    send collector (kvset key properties value)
                    emit "wrote" [ "key", box key; "value", box (Ticker.hex value); "ttl", box ttl ]
            | _ -> ()
        if nowMs () - heard >= silence then // not even a HUGZ, which comes every --hugz ms
            raise (Restarted("silence", seen))
        if collectorLive && not facade.DeleteSent && facade.AllEchoed then
            send collector (kvset facade.FirstWrite [||] [||])
            facade.DeleteSent <- true
            emit "wrote" [ "key", box facade.FirstWrite; "value", box ""; "ttl", box 0 ]
    facade

let runFacade (args: FacadeSettings) =
    let deadline = Deadline(args.Timeout)
    let mutable sockets = FacadeSockets args
    try
        emit "ready" [ "name", box args.Name; "subtrees", box args.Subtrees ]
        let mutable finished = None
        while finished.IsNone do
            try
                finished <- Some(follow args deadline sockets)
            with Restarted(why, last) ->
                // Start over on new sockets: the old ones may still hold the old engine's messages.
                sockets.Close(dropWrites = true) // writes queued for a dead engine are worth nothing
                emit "resynced" [ "why", box why; "last", box last ]
                sockets <- FacadeSockets args
        let facade = finished.Value
        let map = SortedDictionary<string, string>(StringComparer.Ordinal)
        for KeyValue(key, value) in facade.Map do
            map[key] <- Ticker.hex value
        emit "done" [ "sequence", box facade.Last; "first", box facade.First; "map", box map
                      "applied", box facade.Applied; "discarded", box facade.Discarded ]
    finally
        sockets.Close(dropWrites = false)
    // The sockets are closed: wait, as zmq_ctx_term does, for the collector's linger to hand our
    // last write to TCP. Program.run's own cleanup does not block.
    NetMQConfig.Cleanup(true)

/// Validate the command line of a query role (Argu raises on a bad value) and return its run.
let role (args: ParseResults<QueryArgs>) : unit -> unit =
    match args.GetSubCommand() with
    | Engine engine ->
        let settings = engineSettings engine
        fun () -> runEngine settings
    | Facade facade ->
        let settings = facadeSettings facade
        fun () -> runFacade settings
    | Derive derive ->
        let settings = deriveSettings derive
        fun () -> runDerive settings
