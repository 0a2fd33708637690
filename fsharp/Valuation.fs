/// valuation: a PUSH/PULL pipeline with a control channel (examples/valuation/PROTOCOL.md).
module Btb.Valuation

open System
open System.Buffers.Binary
open System.Collections.Generic
open System.Text
open Argu
open NetMQ
open NetMQ.Sockets
open Btb.Contract

let Symbols = [| "AAPL"; "GOOG"; "GOOGL"; "MSFT"; "IBM" |]
let ResendBatch = 1000 // ids per resend message

/// [max size] ZMQ_MAXMSGSIZE on every valuation socket, send-only ones too, set before bind or
/// connect: NetMQ drops a bigger frame together with the sender's connection, so no peer can make a
/// role allocate without bound. The largest legal frames are a 32-byte worker name, `finished` and
/// 8-byte ids and values; control messages are many small frames.
let MaxMessage = 256L

// --- command line ----------------------------------------------------------------------------

type SinkArgs =
    | Results of endpoint: string
    | Control of endpoint: string
    | Workers of count: int
    | Count of orders: int
    | Quiet of ms: int
    | Heartbeat of ms: int
    | Seed of seed: uint64
    | Timeout of ms: int
    | Monitor of on_off: string

    interface IArgParserTemplate with
        member this.Usage =
            match this with
            | Results _ -> "PULL endpoint to bind (default tcp://127.0.0.1:5560)"
            | Control _ -> "PUB endpoint to bind (default tcp://127.0.0.1:5561)"
            | Workers _ -> "ready workers to wait for (default 1)"
            | Count _ -> "orders in the batch (default 100)"
            | Quiet _ -> "silence in ms before missing ids are re-dispatched (default 1000)"
            | Heartbeat _ -> "interval between state messages in ms (default 100)"
            | Seed _ -> "the source's order seed, to check values (default 1)"
            | Timeout _ -> "longest run in ms, 0 for no limit (default 0)"
            | Monitor _ -> "on: report every socket's connection events (default off)"

type SourceArgs =
    | Orders of endpoint: string
    | Control of endpoint: string
    | Count of orders: int
    | Seed of seed: uint64
    | Timeout of ms: int
    | Monitor of on_off: string

    interface IArgParserTemplate with
        member this.Usage =
            match this with
            | Orders _ -> "PUSH endpoint to bind (default tcp://127.0.0.1:5562)"
            | Control _ -> "the sink's PUB endpoint (default tcp://127.0.0.1:5561)"
            | Count _ -> "orders in the batch (default 100)"
            | Seed _ -> "order seed, unsigned 64-bit (default 1)"
            | Timeout _ -> "longest run in ms, 0 for no limit (default 30000)"
            | Monitor _ -> "on: report every socket's connection events (default off)"

type WorkerArgs =
    | Orders of endpoint: string
    | Results of endpoint: string
    | Control of endpoint: string
    | [<Mandatory>] Name of name: string
    | Rate of per_second: int
    | Timeout of ms: int
    | Monitor of on_off: string

    interface IArgParserTemplate with
        member this.Usage =
            match this with
            | Orders _ -> "the source's PUSH endpoint (default tcp://127.0.0.1:5562)"
            | Results _ -> "the sink's PULL endpoint (default tcp://127.0.0.1:5560)"
            | Control _ -> "the sink's PUB endpoint (default tcp://127.0.0.1:5561)"
            | Name _ -> "1 to 32 bytes of UTF-8 (required)"
            | Rate _ -> "orders a second at most, 0 for no limit (default 0)"
            | Timeout _ -> "longest run in ms, 0 for no limit (default 30000)"
            | Monitor _ -> "on: report every socket's connection events (default off)"

type EncodeArgs =
    | [<Mandatory>] Seed of seed: uint64
    | [<Mandatory>] Id of id: uint64

    interface IArgParserTemplate with
        member this.Usage =
            match this with
            | Seed _ -> "order seed, unsigned 64-bit"
            | Id _ -> "order id, unsigned 64-bit"

[<RequireSubcommand>]
type ValuationArgs =
    | [<CliPrefix(CliPrefix.None)>] Sink of ParseResults<SinkArgs>
    | [<CliPrefix(CliPrefix.None)>] Source of ParseResults<SourceArgs>
    | [<CliPrefix(CliPrefix.None)>] Worker of ParseResults<WorkerArgs>
    | [<CliPrefix(CliPrefix.None)>] Encode of ParseResults<EncodeArgs>

    interface IArgParserTemplate with
        member this.Usage =
            match this with
            | Sink _ -> "collect results, re-dispatch lost orders"
            | Source _ -> "hand out the batch, re-send what the sink misses"
            | Worker _ -> "price orders until the batch is finished"
            | Encode _ -> "print the frames of one order (the test vectors)"

type SinkSettings =
    { Results: string; Control: string; Workers: int; Count: int
      Quiet: int; Heartbeat: int; Seed: uint64; Timeout: int; Monitor: bool }

type SourceSettings =
    { Orders: string; Control: string; Count: int; Seed: uint64; Timeout: int; Monitor: bool }

type WorkerSettings =
    { Orders: string; Results: string; Control: string; Name: string; Rate: int; Timeout: int
      Monitor: bool }

type EncodeSettings = { Seed: uint64; Id: uint64 }

let sinkSettings (args: ParseResults<SinkArgs>) : SinkSettings =
    { Results = args.GetResult(SinkArgs.Results, "tcp://127.0.0.1:5560")
      Control = args.GetResult(SinkArgs.Control, "tcp://127.0.0.1:5561")
      Workers = args.TryPostProcessResult(Workers, atLeast 1) |> Option.defaultValue 1
      Count = args.TryPostProcessResult(SinkArgs.Count, atLeast 1) |> Option.defaultValue 100
      Quiet = args.TryPostProcessResult(Quiet, atLeast 1) |> Option.defaultValue 1000
      Heartbeat = args.TryPostProcessResult(Heartbeat, atLeast 1) |> Option.defaultValue 100
      Seed = args.GetResult(SinkArgs.Seed, 1UL) // as the source's: unsigned 64-bit, 0 to 2^64-1
      Timeout = args.TryPostProcessResult(SinkArgs.Timeout, atLeast 0) |> Option.defaultValue 0
      Monitor = args.TryPostProcessResult(SinkArgs.Monitor, onOff) |> Option.defaultValue false }

let sourceSettings (args: ParseResults<SourceArgs>) : SourceSettings =
    { Orders = args.GetResult(SourceArgs.Orders, "tcp://127.0.0.1:5562")
      Control = args.GetResult(SourceArgs.Control, "tcp://127.0.0.1:5561")
      Count = args.TryPostProcessResult(SourceArgs.Count, atLeast 1) |> Option.defaultValue 100
      Seed = args.GetResult(SourceArgs.Seed, 1UL) // Argu reads an unsigned 64-bit: 0 to 2^64-1
      Timeout =
        args.TryPostProcessResult(SourceArgs.Timeout, atLeast 0) |> Option.defaultValue 30000
      Monitor = args.TryPostProcessResult(SourceArgs.Monitor, onOff) |> Option.defaultValue false }

let workerSettings (args: ParseResults<WorkerArgs>) : WorkerSettings =
    { Orders = args.GetResult(WorkerArgs.Orders, "tcp://127.0.0.1:5562")
      Results = args.GetResult(WorkerArgs.Results, "tcp://127.0.0.1:5560")
      Control = args.GetResult(WorkerArgs.Control, "tcp://127.0.0.1:5561")
      Name = args.PostProcessResult(Name, name)
      Rate = args.TryPostProcessResult(Rate, atLeast 0) |> Option.defaultValue 0
      Timeout =
        args.TryPostProcessResult(WorkerArgs.Timeout, atLeast 0) |> Option.defaultValue 30000
      Monitor = args.TryPostProcessResult(WorkerArgs.Monitor, onOff) |> Option.defaultValue false }

let encodeSettings (args: ParseResults<EncodeArgs>) : EncodeSettings =
    { Seed = args.GetResult EncodeArgs.Seed; Id = args.GetResult Id }

// --- orders: a generator anyone can recompute -------------------------------------------------

/// (symbol, side, quantity, cents) of order `id`, with the ticker's splitmix64 (uint64 wraps: mod 2^64).
let order seed (id: uint64) =
    let z1 = Ticker.splitmix64 (seed ^^^ (id * Ticker.Golden))
    let z2 = Ticker.splitmix64 z1
    let z3 = Ticker.splitmix64 z2
    Symbols[int (z1 % 5UL)],
    (if z2 % 2UL = 0UL then "B" else "S"),
    1u + uint32 ((z2 >>> 1) % 1000UL),
    100L + int64 (z3 % 100000UL)

// Big-endian (network order) frames, whatever the machine's own byte order.
let u64Frame (number: uint64) = Ticker.frame8 (fun f -> BinaryPrimitives.WriteUInt64BigEndian(f, number))
let i64Frame (number: int64) = Ticker.frame8 (fun f -> BinaryPrimitives.WriteInt64BigEndian(f, number))

let u32Frame (number: uint32) =
    let frame: byte[] = Array.zeroCreate 4
    BinaryPrimitives.WriteUInt32BigEndian(frame, number)
    frame

let orderFrames seed id =
    let symbol, side, quantity, cents = order seed id
    [ u64Frame id; Encoding.ASCII.GetBytes(symbol: string); Encoding.ASCII.GetBytes(side: string)
      u32Frame quantity; i64Frame cents ]

/// Signed 64-bit cents, negated for a sell. The worker checks the ranges first: no overflow.
let value side (quantity: uint32) (cents: int64) = int64 quantity * cents * (if side = "B" then 1L else -1L)

/// The value of order `id`, as a worker must price it: the sink recomputes it to check results.
let orderValue seed id =
    let _, side, quantity, cents = order seed id
    value side quantity cents

let runEncode (args: EncodeSettings) =
    let frames = orderFrames args.Seed args.Id
    emit "encoded" [ "frames", box (frames |> List.map Ticker.hex); "value", box (orderValue args.Seed args.Id) ]
    emit "done" []

let sizes (frames: byte[] list) = "[" + String.Join(", ", frames |> List.map (fun f -> f.Length)) + "]"

let reportError (code: string, reason: string) = emit "error" [ "code", box code; "reason", box reason ]

// --- sink ------------------------------------------------------------------------------------

// The sink trusts nothing a worker says: what a peer sent is never echoed back in full.

/// A worker name: 1 to 32 bytes of valid UTF-8, or Error with what is wrong with it.
let workerName (nameBytes: byte[]) =
    if nameBytes.Length < 1 || nameBytes.Length > MaxName then
        Error $"a worker name of {nameBytes.Length} bytes, not 1 to {MaxName}"
    else
        try Ok(utf8.GetString nameBytes) with :? ArgumentException -> Error "the worker name is not UTF-8"

/// The name of a `ready` [ready, name], or Error (code, reason).
let checkReady (frames: byte[] list) =
    match frames with
    | [ _; nameBytes ] -> workerName nameBytes |> Result.mapError (fun why -> "malformed-ready", why)
    | _ -> Error("malformed-ready", $"a ready has 2 frames, got {frames.Length}")

/// (worker, id, value) of a result, or Error (code, reason): the first failing check wins. The
/// value must be the one recomputed from the seed, so the total, a sum of checked values (each at
/// most 1000 x 100099 cents either way), cannot overflow a signed 64-bit integer.
let checkResult (frames: byte[] list) (count: int) (seed: uint64) =
    // [multipart] A result arrives whole or not at all, its 4 frames or none; how many frames a peer
    // sent is still checked, never assumed.
    match frames with
    | [ kind; nameBytes; idBytes; amountBytes ] when
        kind = "result"B && idBytes.Length = 8 && amountBytes.Length = 8 ->
        match workerName nameBytes with
        | Error why -> Error("malformed-result", why)
        | Ok worker ->
            let id = BinaryPrimitives.ReadUInt64BigEndian idBytes
            let amount = BinaryPrimitives.ReadInt64BigEndian amountBytes
            if id < 1UL || id > uint64 count then
                Error("unknown-id", $"id {id} is not in 1..{count}")
            elif amount <> orderValue seed id then
                Error("wrong-value", $"order {id} from {worker}: value {amount}, expected {orderValue seed id}")
            else
                Ok(worker, id, amount)
    | _ -> Error("malformed-result", $"not [result, name, id, value]: {sizes frames} bytes")

let runSink (args: SinkSettings) =
    use stop = new StopSignal()
    let deadline = Deadline(args.Timeout)
    // [PULL] Fair-queues readiness and results from every connected worker: one from each in turn.
    use results = new PullSocket()
    // [PUB] Fans the control messages out to every subscriber; it never blocks. A subscriber not
    // connected yet misses a message, and one past its HWM (1000 queued, the default) loses it: which
    // is why the state is repeated every heartbeat.
    use control = new PublisherSocket()
    // [linger] 0: the sink leaves only when told to, and closing drops what it still has queued,
    // which nobody is owed.
    for socket in [ results :> NetMQSocket; control ] do
        socket.Options.Linger <- TimeSpan.Zero
        socket.Options.MaxMsgSize <- MaxMessage // PUB too: it still decodes what subscribers send
    use _ = SocketMonitor.watch results "results" args.Monitor // before the binds: `listening` too
    use _ = SocketMonitor.watch control "control" args.Monitor
    endpoint "bind" results.Bind args.Results
    endpoint "bind" control.Bind args.Control
    emit "ready" [ "results", box results.Options.LastEndpoint; "control", box control.Options.LastEndpoint ]

    let mutable state = "waiting"B
    let ready = HashSet<string>()
    let values = Dictionary<uint64, int64>() // id -> value of its first result
    let priced = Dictionary<string, int>() // worker -> orders counted
    let resent = HashSet<uint64>() // every id ever re-dispatched
    let mutable nextBeat = nowMs ()
    let mutable quietSince = nowMs ()
    let total () = Seq.sum values.Values

    let setState next =
        state <- next
        send control [ state ] // at once; the heartbeat repeats it for late joiners

    let onReady (worker: string) =
        if ready.Add worker then
            emit "worker" [ "name", box worker ]
        if state = "waiting"B && ready.Count >= args.Workers then
            // Each worker heard the control channel before it said ready: none can miss `go`.
            setState "go"B
            emit "started" [ "workers", box ready.Count ]
            quietSince <- nowMs ()

    let onResult (frames: byte[] list) =
        match checkResult frames args.Count args.Seed with
        | Error failure -> reportError failure
        | Ok(worker, id, amount) ->
            if values.ContainsKey id && resent.Contains id then
                emit "late-duplicate" [ "id", box id; "worker", box worker ] // we asked for it twice
            elif values.ContainsKey id then
                reportError ("duplicate", $"a second result for order {id}, from {worker}")
            else
                values[id] <- amount
                priced[worker] <- (match priced.TryGetValue worker with | true, n -> n + 1 | _ -> 1)
                quietSince <- nowMs ()
                emit "result" [ "id", box id; "worker", box worker ]
                if values.Count = args.Count then
                    setState "finished"B
                    emit "complete" [ "total", box (total ()); "workers", box priced
                                      "resent", box (resent |> Seq.sort |> List.ofSeq) ]

    // [poll] The loop's five steps: the stop flag and the deadline; the wait, until the next
    // heartbeat; the poll of the PULL (PUB only sends); one message, received without waiting
    // (POLLIN is a hint); then the timers: the quiet period's resend and the heartbeat. .NET has no
    // EINTR: no signal cuts the poll short, and the flag is seen within a heartbeat.
    while not stop.Raised do
        if deadline.Expired then
            raise (Failure("timeout", $"still running after {args.Timeout} ms with {values.Count} results"))
        let waitMs = max 0L (nextBeat - nowMs ())
        let ready = poll [ results ] (deadline.Cap waitMs)
        match (if ready.Has results then receiveIfReady results else None) with
        | Some(kind :: _ as frames) when kind = "ready"B ->
            match checkReady frames with
            | Ok worker -> onReady worker
            | Error failure -> reportError failure // not a worker: it does not count toward --workers
        | Some frames -> onResult frames
        | None -> ()
        let now = nowMs ()
        if state = "go"B && now - quietSince >= int64 args.Quiet then
            // PUSH dropped what was queued for a worker that died, and nothing tells us: the sink
            // only sees silence. Ask the source again for every id still missing.
            let missing = [ for id in 1UL .. uint64 args.Count do if not (values.ContainsKey id) then id ]
            for batch in List.chunkBySize ResendBatch missing do
                send control ("resend"B :: List.map u64Frame batch)
            resent.UnionWith missing
            emit "resend" [ "ids", box missing ]
            quietSince <- now
        if now >= nextBeat then
            send control [ state ] // level-triggered: a late subscriber learns the state anyway
            nextBeat <- now + int64 args.Heartbeat
    emit "done" [ "orders", box values.Count; "total", box (total ()) ]

// --- source ----------------------------------------------------------------------------------

let runSource (args: SourceSettings) =
    let deadline = Deadline(args.Timeout)
    // [PUSH] Deals orders round-robin to the workers connected at the time; it never drops one.
    use orders = new PushSocket()
    use control = new SubscriberSocket()
    // Linger 0: the source leaves only on `finished`, when every order it sent has been priced.
    for socket in [ orders :> NetMQSocket; control ] do
        socket.Options.Linger <- TimeSpan.Zero
        socket.Options.MaxMsgSize <- MaxMessage
    control.Subscribe("") // every control message: states and resends; before the connect
    use _ = SocketMonitor.watch orders "orders" args.Monitor // before the bind and the connect
    use _ = SocketMonitor.watch control "control" args.Monitor
    endpoint "bind" orders.Bind args.Orders
    endpoint "connect" control.Connect args.Control
    emit "ready" [ "orders", box orders.Options.LastEndpoint ]

    /// One turn of the source's loop: the deadline, a poll of the SUB (no timer: a second at most),
    /// and the next control message, received without waiting; None after a second of silence.
    let nextControl () =
        if deadline.Expired then
            raise (Failure("timeout", $"not finished after {args.Timeout} ms"))
        let ready = poll [ control ] (deadline.Cap 1000L)
        if ready.Has control then receiveIfReady control else None

    // Send the same bytes every time: an order is a function of the seed and its id.
    // [HWM] Each worker's queue holds at most 1000 orders (the default high-water mark). When every
    // queue is full, or no worker is connected, PUSH is in the mute state: a send blocks instead of
    // dropping, so sendWhenRoom polls for room, never past the deadline.
    let sendOrder id = sendWhenRoom orders deadline $"order {id}" (orderFrames args.Seed id)

    // The state is repeated every heartbeat, so `go` comes however late our SUB connected.
    while nextControl () <> Some [ "go"B ] do
        ()
    for id in 1UL .. uint64 args.Count do
        sendOrder id
    emit "sent" [ "orders", box args.Count ]
    let mutable sent = args.Count
    let mutable finished = false
    while not finished do
        match nextControl () with
        | Some [ state ] when state = "finished"B -> finished <- true
        | Some(kind :: frames) when kind = "resend"B ->
            // The ids of our orders, 8 bytes each; anything else is no order of ours: ignored.
            let ids =
                [ for frame in frames do
                      if frame.Length = 8 then
                          let id = BinaryPrimitives.ReadUInt64BigEndian frame
                          if 1UL <= id && id <= uint64 args.Count then id ]
            for id in ids do
                sendOrder id
            sent <- sent + ids.Length
            emit "resent" [ "ids", box ids ]
        | _ -> () // another state, or a heartbeat of silence
    emit "done" [ "sent", box sent ]

// --- worker ----------------------------------------------------------------------------------

/// (id, side, quantity, cents) of an order, or Error (code, reason).
let checkOrder (frames: byte[] list) =
    match frames with
    | [ idBytes; symbol; side; quantityBytes; centsBytes ] when
        idBytes.Length = 8 && 1 <= symbol.Length && symbol.Length <= 8 && side.Length = 1
        && quantityBytes.Length = 4 && centsBytes.Length = 8 ->
        // ASCII decoding turns any byte above 127 into '?', which is no letter A-Z either.
        let quantity = BinaryPrimitives.ReadUInt32BigEndian quantityBytes
        let cents = BinaryPrimitives.ReadInt64BigEndian centsBytes
        if not (Ticker.isSymbol (Encoding.ASCII.GetString symbol)) || (side <> "B"B && side <> "S"B) then
            Error("malformed-order", $"symbol {Ticker.hex symbol} or side {Ticker.hex side} (hex)")
        elif quantity < 1u || quantity > 1000u || cents < 100L || cents > 100099L then // no overflow
            Error("malformed-order", $"quantity {quantity} or price {cents} cents out of range")
        else
            Ok(BinaryPrimitives.ReadUInt64BigEndian idBytes, Encoding.ASCII.GetString side, quantity, cents)
    | _ -> Error("malformed-order", $"frame sizes {sizes frames}, expected [8, 1-8, 1, 4, 8]")

let runWorker (args: WorkerSettings) =
    let deadline = Deadline(args.Timeout)
    let me = utf8.GetBytes args.Name
    use orders = new PullSocket() // takes orders from the source (from every source, fairly)
    use results = new PushSocket() // one peer, the sink: PUSH waits while it is not there
    // [SUB] Subscribed to "" (a prefix of every frame 0: states and resends alike) before it
    // connects, so the subscription travels as soon as the connection starts; nothing else arrives.
    use control = new SubscriberSocket()
    // Linger 0: the worker leaves only on `finished`, when the sink has every result it needs.
    for socket in [ orders :> NetMQSocket; results; control ] do
        socket.Options.Linger <- TimeSpan.Zero
        socket.Options.MaxMsgSize <- MaxMessage
    control.Subscribe("")
    use _ = SocketMonitor.watch orders "orders" args.Monitor // before the connects: the first `connected` too
    use _ = SocketMonitor.watch results "results" args.Monitor
    use _ = SocketMonitor.watch control "control" args.Monitor
    // PULL first: it should be connected long before the source deals the batch round-robin.
    endpoint "connect" orders.Connect args.Orders
    endpoint "connect" results.Connect args.Results
    endpoint "connect" control.Connect args.Control

    // [slow joiner] A subscription reaches the sink's PUB some time after the connect, and what is
    // published before that is lost for us. The sink repeats its state every heartbeat, so once one
    // control message has arrived, our subscription is live and no later one can be missed.
    let mutable first = None
    while first.IsNone do
        if deadline.Expired then
            raise (Failure("timeout", "no control message from the sink"))
        let ready = poll [ control ] (deadline.Cap 1000L)
        if ready.Has control then
            first <- receiveIfReady control
    let mutable finished = first = Some [ "finished"B ]
    let hello = [ "ready"B; me ]
    sendWhenRoom results deadline "ready" hello
    emit "ready" [ "name", box args.Name ]

    let mutable count = 0
    let mutable nextOrder = float (nowMs ()) // monotonic ms; only --rate moves it
    // [poll] The loop's five steps: the deadline; the wait (a second at most; with --rate, until the
    // next order is due); one poll of every socket it reads, PULL and SUB at once (with --rate, the
    // SUB alone until an order is due: orders wait in our PULL queue, or in the source's PUSH queue
    // for us, meanwhile); each ready socket read without waiting, in PROTOCOL.md's order, orders then
    // control (POLLIN is a hint); no timer of its own. .NET has no EINTR to cut the poll short.
    while not finished do
        if deadline.Expired then
            raise (Failure("timeout", $"not finished after {args.Timeout} ms"))
        let waitMs = int64 (nextOrder - float (nowMs ()))
        let pacing = args.Rate > 0 && waitMs > 0L
        let ready =
            if pacing then poll [ control ] (deadline.Cap waitMs)
            else poll [ orders; control ] (deadline.Cap 1000L)
        if ready.Has orders then
            match receiveIfReady orders |> Option.map checkOrder with
            | None -> ()
            | Some(Error failure) -> reportError failure
            | Some(Ok(id, side, quantity, cents)) ->
                let result = [ "result"B; me; u64Frame id; i64Frame (value side quantity cents) ]
                sendWhenRoom results deadline $"the result of order {id}" result
                count <- count + 1
                emit "priced" [ "id", box id ]
                if args.Rate > 0 then
                    nextOrder <- float (nowMs ()) + 1000.0 / float args.Rate
        if ready.Has control then
            match receiveIfReady control with // states and resends; resends are the source's business
            | Some [ state ] when state = "finished"B -> finished <- true
            | Some [ state ] when state = "waiting"B ->
                // A sink waiting for its workers, a restarted one too: say ready again.
                sendWhenRoom results deadline "ready" hello
            | _ -> ()
    emit "done" [ "priced", box count ]

/// Validate the command line of a valuation role (Argu raises on a bad value) and return its run.
let role (args: ParseResults<ValuationArgs>) : unit -> unit =
    match args.GetSubCommand() with
    | Sink sink ->
        let settings = sinkSettings sink
        fun () -> runSink settings
    | Source source ->
        let settings = sourceSettings source
        fun () -> runSource settings
    | Worker worker ->
        let settings = workerSettings worker
        fun () -> runWorker settings
    | Encode encode ->
        let settings = encodeSettings encode
        fun () -> runEncode settings
