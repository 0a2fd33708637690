/// ticker: data distribution over PUB/SUB with an XSUB/XPUB proxy (examples/ticker/PROTOCOL.md).
module Btb.Ticker

open System
open System.Buffers.Binary
open System.Collections.Generic
open System.Text
open Argu
open NetMQ
open NetMQ.Sockets
open Btb.Contract

// Arithmetic modulo 2^64, as the protocol says: F#'s uint64 `+` and `*` wrap (Checked is not open).
let Golden = 0x9E3779B97F4A7C15UL

/// [max size] ZMQ_MAXMSGSIZE on every ticker socket, set before bind or connect: NetMQ drops a bigger
/// frame together with the sender's connection. The largest legal frames are a subscription, 1 + `@`
/// + a 32-byte name = 34 bytes, and a tick's 9; a 60 KB subscription once overflowed the stack in
/// NetMQ's subscription trie.
let MaxMessage = 256L

// --- command line ----------------------------------------------------------------------------

type PublisherArgs =
    | Ticks of endpoint: string
    | Symbols of list: string
    | Seed of seed: uint64
    | Subscribers of count: int
    | Interval of ms: int
    | Timeout of ms: int
    | Monitor of on_off: string

    interface IArgParserTemplate with
        member this.Usage =
            match this with
            | Ticks _ -> "XPUB endpoint to bind (default tcp://127.0.0.1:5557)"
            | Symbols _ -> "comma-separated symbols to publish, in round order (default AAPL,GOOG,GOOGL,MSFT,IBM)"
            | Seed _ -> "price seed, unsigned 64-bit (default 1)"
            | Subscribers _ -> "@name topics to wait for before publishing (default 1)"
            | Interval _ -> "time between rounds in ms (default 2)"
            | Timeout _ -> "longest run in ms, 0 for no limit (default 0)"
            | Monitor _ -> "on: report every socket's connection events (default off)"

type ProxyArgs =
    | Upstream of endpoint: string
    | Downstream of endpoint: string
    | Timeout of ms: int
    | Monitor of on_off: string

    interface IArgParserTemplate with
        member this.Usage =
            match this with
            | Upstream _ -> "the publisher's endpoint, for XSUB to connect (default tcp://127.0.0.1:5557)"
            | Downstream _ -> "XPUB endpoint to bind (default tcp://127.0.0.1:5558)"
            | Timeout _ -> "longest run in ms, 0 for no limit (default 0)"
            | Monitor _ -> "on: report every socket's connection events (default off)"

type SubscriberArgs =
    | Ticks of endpoint: string
    | [<Mandatory>] Name of name: string
    | [<Mandatory>] Symbols of list: string
    | Count of ticks: int
    | Seed of seed: uint64
    | Switch of old_new: string
    | Switch_After of ticks: int
    | Timeout of ms: int
    | Monitor of on_off: string

    interface IArgParserTemplate with
        member this.Usage =
            match this with
            | Ticks _ -> "the endpoint to connect (default tcp://127.0.0.1:5557)"
            | Name _ -> "1 to 32 bytes; the @name topic (required)"
            | Symbols _ -> "comma-separated symbols to subscribe to (required)"
            | Count _ -> "ticks per symbol to receive (default 20)"
            | Seed _ -> "the publisher's seed, to check prices (default 1)"
            | Switch _ -> "OLD:NEW, change one subscription while running (default none)"
            | Switch_After _ -> "ticks of OLD before switching (default 10)"
            | Timeout _ -> "longest run in ms, 0 for no limit (default 30000)"
            | Monitor _ -> "on: report every socket's connection events (default off)"

type EncodeArgs =
    | [<Mandatory>] Seed of seed: uint64
    | [<Mandatory>] Symbol of symbol: string
    | [<Mandatory>] Sequence of sequence: uint64
    | [<Mandatory>] Timestamp of ms: int64

    interface IArgParserTemplate with
        member this.Usage =
            match this with
            | Seed _ -> "price seed, unsigned 64-bit"
            | Symbol _ -> "1 to 8 letters A-Z"
            | Sequence _ -> "sequence number, unsigned 64-bit"
            | Timestamp _ -> "milliseconds since the Unix epoch, signed 64-bit"

[<RequireSubcommand>]
type TickerArgs =
    | [<CliPrefix(CliPrefix.None)>] Publisher of ParseResults<PublisherArgs>
    | [<CliPrefix(CliPrefix.None)>] Proxy of ParseResults<ProxyArgs>
    | [<CliPrefix(CliPrefix.None)>] Subscriber of ParseResults<SubscriberArgs>
    | [<CliPrefix(CliPrefix.None)>] Encode of ParseResults<EncodeArgs>

    interface IArgParserTemplate with
        member this.Usage =
            match this with
            | Publisher _ -> "publish ticks once the subscribers are there"
            | Proxy _ -> "forward ticks downstream and subscriptions upstream"
            | Subscriber _ -> "receive and check the ticks of some symbols"
            | Encode _ -> "print the frames of one tick (the test vectors)"

type PublisherSettings =
    { Ticks: string; Symbols: string list; Seed: uint64
      Subscribers: int; Interval: int; Timeout: int; Monitor: bool }

type ProxySettings = { Upstream: string; Downstream: string; Timeout: int; Monitor: bool }

type SubscriberSettings =
    { Ticks: string; Name: string; Symbols: string list; Count: int; Seed: uint64
      Switch: (string * string) option; SwitchAfter: int; Timeout: int; Monitor: bool }

type EncodeSettings = { Seed: uint64; Symbol: string; Sequence: uint64; Timestamp: int64 }

// Checks Argu runs on a flag's value (PostProcessResult): a failure is a bad command line.

let isSymbol (value: string) =
    1 <= value.Length && value.Length <= 8 && value |> Seq.forall (fun c -> 'A' <= c && c <= 'Z')

let symbol (value: string) =
    if not (isSymbol value) then failwith "a symbol is 1 to 8 letters A-Z"
    value

let MaxSymbols = 32

/// Every list of symbols on a command line (ticker publisher and subscriber --symbols, query engine
/// --symbols, desk trader --follow): 1 to 32 symbols, none twice.
let symbols (value: string) =
    let list = value.Split ',' |> Seq.map symbol |> List.ofSeq
    if list.Length > MaxSymbols then failwith $"at most {MaxSymbols} symbols"
    if List.distinct list <> list then failwith "a symbol appears twice"
    list

let switch (value: string) =
    match value.Split(':', 2) with
    | [| old; next |] -> symbol old, symbol next
    | _ -> failwith "expected OLD:NEW"

let publisherSettings (args: ParseResults<PublisherArgs>) : PublisherSettings =
    { Ticks = args.GetResult(PublisherArgs.Ticks, "tcp://127.0.0.1:5557")
      Symbols =
        args.TryPostProcessResult(PublisherArgs.Symbols, symbols)
        |> Option.defaultWith (fun () -> symbols "AAPL,GOOG,GOOGL,MSFT,IBM")
      Seed = args.GetResult(PublisherArgs.Seed, 1UL)
      Subscribers = args.TryPostProcessResult(Subscribers, atLeast 1) |> Option.defaultValue 1
      Interval = args.TryPostProcessResult(Interval, atLeast 1) |> Option.defaultValue 2
      Timeout = args.TryPostProcessResult(PublisherArgs.Timeout, atLeast 0) |> Option.defaultValue 0
      Monitor = args.TryPostProcessResult(PublisherArgs.Monitor, onOff) |> Option.defaultValue false }

let proxySettings (args: ParseResults<ProxyArgs>) : ProxySettings =
    { Upstream = args.GetResult(Upstream, "tcp://127.0.0.1:5557")
      Downstream = args.GetResult(Downstream, "tcp://127.0.0.1:5558")
      Timeout = args.TryPostProcessResult(ProxyArgs.Timeout, atLeast 0) |> Option.defaultValue 0
      Monitor = args.TryPostProcessResult(ProxyArgs.Monitor, onOff) |> Option.defaultValue false }

let subscriberSettings (args: ParseResults<SubscriberArgs>) : SubscriberSettings =
    let settings =
        { Ticks = args.GetResult(SubscriberArgs.Ticks, "tcp://127.0.0.1:5557")
          Name = args.PostProcessResult(SubscriberArgs.Name, name)
          Symbols = args.PostProcessResult(SubscriberArgs.Symbols, symbols)
          Count = args.TryPostProcessResult(Count, atLeast 1) |> Option.defaultValue 20
          Seed = args.GetResult(SubscriberArgs.Seed, 1UL)
          Switch = args.TryPostProcessResult(Switch, switch)
          SwitchAfter = args.TryPostProcessResult(Switch_After, atLeast 1) |> Option.defaultValue 10
          Timeout =
            args.TryPostProcessResult(SubscriberArgs.Timeout, atLeast 0) |> Option.defaultValue 30000
          Monitor = args.TryPostProcessResult(SubscriberArgs.Monitor, onOff) |> Option.defaultValue false }
    match settings.Switch with
    | Some(old, next) when not (List.contains old settings.Symbols) || List.contains next settings.Symbols ->
        args.Raise("--switch OLD:NEW needs OLD among --symbols and NEW not") // exit 2, like Argu's own
    | _ -> settings

let encodeSettings (args: ParseResults<EncodeArgs>) : EncodeSettings =
    { Seed = args.GetResult EncodeArgs.Seed
      Symbol = args.PostProcessResult(Symbol, symbol)
      Sequence = args.GetResult Sequence
      Timestamp = args.GetResult Timestamp }

// --- the tick: prices anyone can recompute ---------------------------------------------------

let fnv1a64 (data: byte[]) =
    data |> Array.fold (fun h b -> (h ^^^ uint64 b) * 0x100000001B3UL) 0xCBF29CE484222325UL

let splitmix64 (x: uint64) =
    let z = x + Golden
    let z = (z ^^^ (z >>> 30)) * 0xBF58476D1CE4E5B9UL
    let z = (z ^^^ (z >>> 27)) * 0x94D049BB133111EBUL
    z ^^^ (z >>> 31)

let cents seed (symbol: string) (sequence: uint64) =
    1000UL + splitmix64 (seed ^^^ fnv1a64 (Encoding.ASCII.GetBytes symbol) ^^^ (sequence * Golden)) % 99001UL

/// Lowercase hex, for the encoded frames and for bad bytes in an error's reason.
let hex (bytes: byte[]) = Convert.ToHexStringLower bytes

/// Frame 0: the symbol and a NUL, so that subscribing to GOOG does not also match GOOGL.
let topic (symbol: string) = Array.append (Encoding.ASCII.GetBytes symbol) [| 0uy |]

/// An 8-byte frame, written big-endian (network order) whatever the machine's own byte order.
let frame8 (write: byte[] -> unit) =
    let frame = Array.zeroCreate 8
    write frame
    frame

let tickFrames seed symbol (sequence: uint64) (timestamp: int64) =
    let price = float (cents seed symbol sequence) / 100.0 // exact conversion, one IEEE division
    [ topic symbol
      frame8 (fun f -> BinaryPrimitives.WriteUInt64BigEndian(f, sequence))
      frame8 (fun f -> BinaryPrimitives.WriteInt64BigEndian(f, timestamp))
      frame8 (fun f -> BinaryPrimitives.WriteDoubleBigEndian(f, price)) ]

let runEncode (args: EncodeSettings) =
    let frames = tickFrames args.Seed args.Symbol args.Sequence args.Timestamp
    emit "encoded" [ "frames", box (frames |> List.map hex)
                     "cents", box (cents args.Seed args.Symbol args.Sequence) ]
    emit "done" []

// --- publisher -------------------------------------------------------------------------------

/// One frame from the XPUB, judged on its own: 1 (subscribe) or 0 (unsubscribe), then the topic.
/// `topics` holds the topics reported so far: a subscribe is reported only when its topic is new,
/// an unsubscribe only when it is there (XPUB passes on one of each per topic, but a peer can send
/// anything). `subscribers` holds every `@name` ever joined: they are what --subscribers counts.
let onSubscription (message: byte[]) (topics: HashSet<string>) (subscribers: HashSet<string>) =
    let malformed reason = emit "error" [ "code", box "malformed-subscription"; "reason", box reason ]
    if message.Length < 2 || message[0] > 1uy then
        malformed $"not a subscription: {hex message[.. 39]}"
    else
        let on, topicBytes = message[0] = 1uy, message[1..]
        let text = Encoding.ASCII.GetString topicBytes // lenient: only A-Z matters below
        if topicBytes[0] = byte '@' then
            // A name is 1 to 32 bytes of valid UTF-8 (utf8 is strict: bad bytes throw).
            let name = topicBytes[1..]
            match (try Some(utf8.GetString name) with :? DecoderFallbackException -> None) with
            | Some who when name.Length >= 1 && name.Length <= MaxName ->
                if not on then
                    topics.Remove("@" + who) |> ignore // a subscriber left: nothing to report
                elif topics.Add("@" + who) then
                    subscribers.Add who |> ignore
                    emit "joined" [ "subscriber", box who ]
            | _ -> malformed $"not a name: {hex name[.. 39]}"
        elif text.EndsWith '\000' && isSymbol text[.. text.Length - 2] then
            let symbol = text[.. text.Length - 2]
            if on && topics.Add symbol then
                emit "subscribed" [ "symbol", box symbol ]
            elif not on && topics.Remove symbol then
                emit "unsubscribed" [ "symbol", box symbol ]
        else
            malformed $"unknown topic {hex topicBytes[.. 39]}"

let runPublisher (args: PublisherSettings) =
    use stop = new StopSignal()
    let deadline = Deadline(args.Timeout)
    // [XPUB] A PUB that also hands us each subscription coming from downstream, as a message: first
    // byte 1 (subscribe) or 0 (unsubscribe), then the topic.
    use ticks = new XPublisherSocket()
    // [linger] 0 on every ticker socket: ticks are a stream, and closing drops the ones still queued,
    // which nobody is owed.
    ticks.Options.Linger <- TimeSpan.Zero
    ticks.Options.MaxMsgSize <- MaxMessage
    use _ = SocketMonitor.watch ticks "ticks" args.Monitor // before the bind: `listening` too
    endpoint "bind" ticks.Bind args.Ticks
    emit "ready" [ "ticks", box ticks.Options.LastEndpoint ]

    let topics = HashSet<string>()
    let subscribers = HashSet<string>()
    let mutable sequence = 0UL // every symbol gets one tick per round, so they share the round number
    let mutable nextRound = None // monotonic ms; publishing starts once every subscriber is there
    // [poll] The loop's five steps: the stop flag and the deadline; the wait, until the next round
    // (a tenth of a second before the first, so that the flag is seen: .NET has no EINTR, no signal
    // cuts a poll short); the poll of the XPUB, which serves subscriptions meanwhile; a receive that
    // never waits (POLLIN is a hint); then the round, when it is due.
    while not stop.Raised do
        if deadline.Expired then
            raise (Failure("timeout", $"still publishing after {args.Timeout} ms"))
        let waitMs = nextRound |> Option.map (fun due -> max 0L (due - nowMs ())) |> Option.defaultValue 100L
        let ready = poll [ ticks ] (deadline.Cap waitMs)
        // [multipart] One frame at a time, whatever its more flag: NetMQ's XPUB filters only a
        // message's first frame and passes the others on as they came, so every frame is judged as a
        // subscription of its own, never assumed to be one because of where it came.
        match (if ready.Has ticks then receiveFrameIfReady ticks else None) with
        | Some frame ->
            onSubscription frame topics subscribers
            // [slow joiner] A tick published before a subscriber's subscriptions reach us is lost for
            // it. A subscriber sends its @name last, after its symbols, in order on one connection:
            // once every @name is here, every symbol is in place, and publishing starts.
            if nextRound.IsNone && subscribers.Count >= args.Subscribers then
                emit "started" [ "subscribers", box subscribers.Count ]
                nextRound <- Some(nowMs ())
        | None -> () // nothing after all
        match nextRound with
        | Some due when nowMs () >= due ->
            sequence <- sequence + 1UL
            let now = DateTimeOffset.UtcNow.ToUnixTimeMilliseconds()
            // [HWM] XPUB, a PUB, never blocks: each subscriber's queue holds 1000 messages (the default
            // high-water mark), and one that is full loses ticks instead (the subscriber reports the gap).
            for symbol in args.Symbols do
                send ticks (tickFrames args.Seed symbol sequence now)
            nextRound <- Some(due + int64 args.Interval)
        | _ -> ()
    emit "done" [ "rounds", box sequence; "ticks", box (sequence * uint64 args.Symbols.Length) ]

// --- proxy -----------------------------------------------------------------------------------

let runProxy (args: ProxySettings) =
    use stop = new StopSignal()
    let deadline = Deadline(args.Timeout)
    // [XSUB] Faces the publisher: a SUB whose subscriptions are messages the application sends, here
    // the proxy, passing on those that its XPUB receives. It receives ticks.
    use upstream = new XSubscriberSocket()
    use downstream = new XPublisherSocket() // faces subscribers: sends ticks, receives subscriptions
    for socket in [ upstream :> NetMQSocket; downstream ] do
        socket.Options.Linger <- TimeSpan.Zero
        socket.Options.MaxMsgSize <- MaxMessage
    // Subscriptions go upstream once per topic (XPUB passes on only the first): one dropped at the
    // send high-water mark during a flood would be lost for good. No limit on XSUB's sends.
    upstream.Options.SendHighWatermark <- 0
    use _ = SocketMonitor.watch upstream "upstream" args.Monitor // before the bind and the connect
    use _ = SocketMonitor.watch downstream "downstream" args.Monitor
    endpoint "bind" downstream.Bind args.Downstream
    endpoint "connect" upstream.Connect args.Upstream
    emit "ready" [ "downstream", box downstream.Options.LastEndpoint ]

    // [proxy] The library's own proxy forwards every message both ways: ticks from XSUB to XPUB,
    // subscriptions from XPUB to XSUB; it adds nothing of its own. It runs on a poller's thread, so
    // that this one can wait for SIGTERM/SIGINT or the deadline, then stop the poller and the proxy
    // (NetMQ has no steerable proxy, so no control PAIR; and it cannot stop a proxy not yet started).
    use poller = new NetMQPoller()
    poller.Add upstream
    poller.Add downstream
    let proxy = NetMQ.Proxy(upstream, downstream, null, poller)
    proxy.Start() // with a poller of ours, this only hands it the sockets
    poller.RunAsync()
    let signalled = stop.Wait deadline.RemainingMs
    poller.Stop()
    proxy.Stop()
    if not signalled then
        raise (Failure("timeout", $"still proxying after {args.Timeout} ms"))
    emit "done" []

// --- subscriber ------------------------------------------------------------------------------

/// The tick's (symbol, sequence, timestamp, price), or Error (code, reason) for a bad one.
let checkTick (frames: byte[] list) (subscribed: string list) seed =
    // [multipart] A tick arrives whole or not at all, its 4 frames or none; but a peer may send any
    // number of frames: the count is checked, never assumed.
    match frames with
    | [ symbolBytes; sequenceBytes; timestampBytes; priceBytes ] ->
        let symbol = Encoding.ASCII.GetString symbolBytes // lenient: checked just below
        if not (symbol.EndsWith '\000' && isSymbol symbol[.. symbol.Length - 2]) then
            Error("malformed-tick", $"frame 0 is not a symbol and a NUL: {hex symbolBytes[.. 11]}")
        elif frames.Tail |> List.exists (fun frame -> frame.Length <> 8) then
            let sizes = frames.Tail |> List.map (fun frame -> frame.Length)
            Error("malformed-tick", $"frames 1-3 have %A{sizes} bytes, not 8 each")
        elif sequenceBytes[0] >= 0x80uy then // big-endian, top bit set: a sequence of 2^63 or more
            // Past what every language's JSON numbers carry alike (C's jansson: signed 64-bit);
            // no publisher gets there.
            let sequence = BinaryPrimitives.ReadUInt64BigEndian sequenceBytes
            Error("malformed-tick", $"sequence {sequence} is 2^63 or more")
        else
            let symbol = symbol[.. symbol.Length - 2]
            if not (List.contains symbol subscribed) then
                Error("unexpected-symbol", $"{symbol} is not subscribed")
            else
                let sequence = BinaryPrimitives.ReadUInt64BigEndian sequenceBytes
                let timestamp = BinaryPrimitives.ReadInt64BigEndian timestampBytes
                let expected = (tickFrames seed symbol sequence timestamp)[3]
                if priceBytes <> expected then
                    let reason = $"{symbol} #{sequence}: price bytes {hex priceBytes}, expected {hex expected}"
                    Error("wrong-price", reason)
                else
                    Ok(symbol, sequence, timestamp, BinaryPrimitives.ReadDoubleBigEndian priceBytes)
    | _ -> Error("malformed-tick", $"expected 4 frames, got {frames.Length}")

let runSubscriber (args: SubscriberSettings) =
    let deadline = Deadline(args.Timeout)
    use sub = new SubscriberSocket()
    sub.Options.Linger <- TimeSpan.Zero
    sub.Options.MaxMsgSize <- MaxMessage
    use _ = SocketMonitor.watch sub "ticks" args.Monitor // before the connect: the first `connected` too
    endpoint "connect" sub.Connect args.Ticks
    // [SUB] Subscriptions are prefix filters on frame 0 (GOOG\0 is not a prefix of GOOGL\0); the SUB
    // receives nothing else. This SUB subscribes after its connect, on purpose: what a SUB subscribes
    // before connecting goes out when the connection starts, in the order of the library's
    // subscription trie (NetMQ's: sorted by bytes, `@` before `A`), while what it subscribes after
    // connecting goes out in the order made, and the @name must come last (PROTOCOL.md, "Subscriber", step 1).
    let mutable subscribed = args.Symbols
    for symbol in subscribed do
        sub.Subscribe(topic symbol)
    // Last, our own topic: the publisher waits for it, and by then our symbols are in place.
    sub.Subscribe(utf8.GetBytes("@" + args.Name))
    emit "ready" [ "name", box args.Name; "symbols", box subscribed ]

    let received = Dictionary<string, int>()
    for symbol in subscribed do
        received[symbol] <- 0
    let last = Dictionary<string, uint64>() // each symbol's last sequence: a jump is a gap, reported as such
    let mutable switched = args.Switch.IsNone
    let mutable total = 0
    let mutable malformed = 0
    let isDone () = switched && subscribed |> List.forall (fun symbol -> received[symbol] >= args.Count)
    // [poll] The loop's steps: the deadline; the wait (no timer: up to the deadline, a second at
    // most); the poll of the SUB; a receive that never waits (POLLIN is a hint; .NET has no EINTR).
    while not (isDone ()) do
        // Every turn, after a message as well as after an idle poll: a stream of ticks that count
        // for nothing (bad ones, or more of a symbol already done) cannot keep us past the deadline.
        if deadline.Expired then
            let missing = [ for KeyValue(symbol, n) in received do if n < args.Count then $"{symbol}: {n}" ]
            let missing = String.Join(", ", missing)
            raise (Failure("timeout", $"not done after {args.Timeout} ms; ticks so far: {missing}"))
        let ready = poll [ sub ] (deadline.Cap 1000L)
        match (if ready.Has sub then receiveIfReady sub else None) with
        | None -> ()
        | Some frames ->
            match checkTick frames subscribed args.Seed with
            | Error(code, reason) ->
                malformed <- malformed + 1
                emit "error" [ "code", box code; "reason", box reason ]
            | Ok(symbol, sequence, timestamp, price) ->
                total <- total + 1
                received[symbol] <- received[symbol] + 1
                // PUB/SUB drops silently: ticks published while the path to us was down (a proxy
                // that restarted) or while a queue was full (the HWM) are gone. Say so, never hide it.
                match last.TryGetValue symbol with
                | true, previous when sequence > previous + 1UL ->
                    emit "gap" [ "symbol", box symbol; "after", box previous; "next", box sequence ]
                | _ -> () // the first tick of a symbol, or the next one
                last[symbol] <- sequence
                emit "tick" [ "symbol", box symbol; "sequence", box sequence
                              "timestamp", box timestamp; "price", box price ]
                match args.Switch with
                | Some(old, next) when symbol = old && received[old] = args.SwitchAfter ->
                    // The SUB socket filters by its current subscriptions as it delivers: no tick
                    // of OLD comes after this, even one already queued.
                    sub.Unsubscribe(topic old)
                    subscribed <- subscribed |> List.filter ((<>) old)
                    emit "unsubscribed" [ "symbol", box old ]
                    // NEW's first ticks may be missed while this subscription travels upstream.
                    sub.Subscribe(topic next)
                    subscribed <- subscribed @ [ next ]
                    received.TryAdd(next, 0) |> ignore
                    emit "subscribed" [ "symbol", box next ]
                    switched <- true
                | _ -> ()
    emit "done" [ "ticks", box total; "malformed", box malformed ]

/// Validate the command line of a ticker role (Argu raises on a bad value) and return its run.
let role (args: ParseResults<TickerArgs>) : unit -> unit =
    match args.GetSubCommand() with
    | Publisher publisher ->
        let settings = publisherSettings publisher
        fun () -> runPublisher settings
    | Proxy proxy ->
        let settings = proxySettings proxy
        fun () -> runProxy settings
    | Subscriber subscriber ->
        let settings = subscriberSettings subscriber
        fun () -> runSubscriber settings
    | Encode encode ->
        let settings = encodeSettings encode
        fun () -> runEncode settings
