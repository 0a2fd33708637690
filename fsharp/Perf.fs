/// perf: throughput and latency as libzmq's perf tools measure them (examples/perf/PROTOCOL.md).
///
/// The hot loops use NetMQ's lowest-level API: one `Msg` value reused for every receive, and sends
/// of a `Msg` that wraps one preallocated all-zero array (`InitGC`: no allocation, no copy). Every
/// send and receive waits at most the role's --timeout, given as a TimeSpan computed once: no poll
/// per message, which would cost as much as the message itself. The overall deadline is looked at
/// once every 1000 messages.
///
/// NetMQ's buffer pool stays at its default, which gives every received message a new array and
/// leaves it to the garbage collector: its pooled BufferManager measured slower at 64 B (a C# sink
/// fed by C: 2.7 M against 3.6 M msg/s) and no faster at 1 KiB. The same in C#, F# and VB. The
/// runtime settings (ReadyToRun, tiered compilation off) are in ../Directory.Build.props.
module Btb.Perf

open System
open System.Diagnostics
open System.Threading
open Argu
open NetMQ
open NetMQ.Sockets
open Btb.Contract

let ThroughputCount = 100000
let LatencyCount = 10000

// --- command line ----------------------------------------------------------------------------

type ThroughputArgs =
    | Endpoint of endpoint: string
    | Size of bytes: int
    | Count of messages: int
    | Timeout of ms: int

    interface IArgParserTemplate with
        member this.Usage =
            match this with
            | Endpoint _ -> "bound by the sink, connected by the source (default tcp://127.0.0.1:5570)"
            | Size _ -> "bytes in every message (default 64)"
            | Count _ -> $"messages to send or receive (default {ThroughputCount})"
            | Timeout _ -> "longest run in ms, 0 for no limit (default 60000)"

type LatencyArgs =
    | Endpoint of endpoint: string
    | Size of bytes: int
    | Count of round_trips: int
    | Timeout of ms: int

    interface IArgParserTemplate with
        member this.Usage =
            match this with
            | Endpoint _ -> "bound by the echo, connected by the ping (default tcp://127.0.0.1:5570)"
            | Size _ -> "bytes in every message (default 64)"
            | Count _ -> $"round trips (default {LatencyCount})"
            | Timeout _ -> "longest run in ms, 0 for no limit (default 60000)"

type InprocArgs =
    | Size of bytes: int
    | Count of messages: int
    | Timeout of ms: int

    interface IArgParserTemplate with
        member this.Usage =
            match this with
            | Size _ -> "bytes in every message (default 64)"
            | Count _ -> $"messages (default {ThroughputCount})"
            | Timeout _ -> "longest run in ms, 0 for no limit (default 60000)"

[<RequireSubcommand>]
type PerfArgs =
    | [<CliPrefix(CliPrefix.None)>] Thr_Sink of ParseResults<ThroughputArgs>
    | [<CliPrefix(CliPrefix.None)>] Thr_Source of ParseResults<ThroughputArgs>
    | [<CliPrefix(CliPrefix.None)>] Lat_Echo of ParseResults<LatencyArgs>
    | [<CliPrefix(CliPrefix.None)>] Lat_Ping of ParseResults<LatencyArgs>
    | [<CliPrefix(CliPrefix.None)>] Inproc_Thr of ParseResults<InprocArgs>

    interface IArgParserTemplate with
        member this.Usage =
            match this with
            | Thr_Sink _ -> "PULL: binds, receives --count messages, times them (local_thr)"
            | Thr_Source _ -> "PUSH: connects, sends --count messages (remote_thr)"
            | Lat_Echo _ -> "REP: binds, sends back every message (local_lat)"
            | Lat_Ping _ -> "REQ: connects, times --count round trips (remote_lat)"
            | Inproc_Thr _ -> "PUSH and PULL on two threads of one process over inproc:// (inproc_thr)"

type Settings = { Endpoint: string; Size: int; Count: int; Timeout: int }

let DefaultEndpoint = "tcp://127.0.0.1:5570"
let DefaultTimeout = 60000

let throughputSettings (args: ParseResults<ThroughputArgs>) : Settings =
    { Endpoint = args.GetResult(ThroughputArgs.Endpoint, DefaultEndpoint)
      Size = args.TryPostProcessResult(ThroughputArgs.Size, atLeast 0) |> Option.defaultValue 64
      Count =
        args.TryPostProcessResult(ThroughputArgs.Count, atLeast 1) |> Option.defaultValue ThroughputCount
      Timeout =
        args.TryPostProcessResult(ThroughputArgs.Timeout, atLeast 0) |> Option.defaultValue DefaultTimeout }

let latencySettings (args: ParseResults<LatencyArgs>) : Settings =
    { Endpoint = args.GetResult(LatencyArgs.Endpoint, DefaultEndpoint)
      Size = args.TryPostProcessResult(LatencyArgs.Size, atLeast 0) |> Option.defaultValue 64
      Count = args.TryPostProcessResult(LatencyArgs.Count, atLeast 1) |> Option.defaultValue LatencyCount
      Timeout =
        args.TryPostProcessResult(LatencyArgs.Timeout, atLeast 0) |> Option.defaultValue DefaultTimeout }

let inprocSettings (args: ParseResults<InprocArgs>) : Settings =
    { Endpoint = "inproc://perf"
      Size = args.TryPostProcessResult(InprocArgs.Size, atLeast 0) |> Option.defaultValue 64
      Count =
        args.TryPostProcessResult(InprocArgs.Count, atLeast 1) |> Option.defaultValue ThroughputCount
      Timeout =
        args.TryPostProcessResult(InprocArgs.Timeout, atLeast 0) |> Option.defaultValue DefaultTimeout }

// --- sockets and messages --------------------------------------------------------------------

/// The wait of every send and receive: the role's --timeout, or no limit (0). NetMQ has no
/// RCVTIMEO/SNDTIMEO option; TrySend/TryReceive take the wait instead, and this one value is
/// computed once, not per message.
let waitOf (timeoutMs: int) =
    if timeoutMs > 0 then TimeSpan.FromMilliseconds(float timeoutMs) else Timeout.InfiniteTimeSpan

/// The largest frame a socket takes (ZMQ_MAXMSGSIZE): NetMQ drops a bigger one together with the
/// sender's connection, so no peer can make a role allocate without bound. At least 256 bytes: the
/// same limit applies to the handshake's READY command.
let maxMessage (size: int) = int64 (max size 256)

/// Linger 0 (NetMQ's default too, set explicitly as the launch contract asks) on every socket but
/// the source's, which passes its own; and the largest frame, for messages of `size` bytes.
let configure (socket: NetMQSocket) (linger: TimeSpan) (size: int) =
    socket.Options.Linger <- linger
    socket.Options.MaxMsgSize <- maxMessage size
    // High-water marks stay at the default (1000 messages), as in libzmq's tools: PUSH blocks
    // when the sink's queue and its own are full, and that flow control is part of what we time.
    socket

/// Out of the hot loop: only a failure builds a string.
let wrongSize (got: int) (more: bool) (size: int) =
    let frames = if more then " and more frames" else ""
    raise (Failure("wrong-size", $"a message of {got} bytes{frames}, expected {size}"))

/// One message: a single frame of exactly `size` bytes, into `msg`, which the caller reuses (NetMQ
/// closes what it held before). Any other size, or a
/// frame with more to follow, is fatal: the figure would measure something else.
let inline receive (socket: NetMQSocket) (msg: byref<Msg>) (size: int) (wait: TimeSpan) =
    if not (socket.TryReceive(&msg, wait)) then
        raise (Failure("timeout", "no message within the timeout"))
    if msg.Size <> size || msg.HasMore then
        wrongSize msg.Size msg.HasMore size

/// Send `msg` as one frame. On success NetMQ takes the message and leaves `msg` empty.
let inline send (socket: NetMQSocket) (msg: byref<Msg>) (wait: TimeSpan) =
    if not (socket.TrySend(&msg, wait, false)) then
        msg.Close()
        raise (Failure("timeout", "no room to send within the timeout"))

/// The deadline, looked at once every 1000 messages: cheap, and bounds the loop in time.
let inline check (deadline: Deadline) (finished: int) =
    if finished % 1000 = 0 && deadline.Expired then
        raise (Failure("timeout", $"not finished by the deadline ({finished} messages)"))

/// Seconds between two Stopwatch timestamps (monotonic, high resolution). At least one tick: with
/// --count 1 the two readings can be equal, and a rate must stay a finite JSON number.
let seconds (started: int64) (ended: int64) = float (max 1L (ended - started)) / float Stopwatch.Frequency

let throughput (size: int) (count: int) (elapsed: float) =
    let rate = float count / elapsed
    [ "size", box size; "count", box count; "seconds", box elapsed
      "msg_per_s", box rate; "mbit_per_s", box (rate * float size * 8.0 / 1e6) ]

/// Receive `count` messages; time from the arrival of the first to the arrival of the last
/// (libzmq's local_thr).
let sink (pull: NetMQSocket) (size: int) (count: int) (deadline: Deadline) (wait: TimeSpan) =
    let mutable msg = Msg()
    msg.InitEmpty()
    receive pull &msg size wait
    let started = Stopwatch.GetTimestamp()
    for finished in 1 .. count - 1 do
        check deadline finished
        receive pull &msg size wait
    let ended = Stopwatch.GetTimestamp()
    msg.Close()
    throughput size count (seconds started ended)

/// Send `count` messages of `size` zero bytes. Every message wraps the same array (a GC message:
/// NetMQ neither copies nor frees it), which nobody writes to, so queued messages can share it.
let source (push: NetMQSocket) (size: int) (count: int) (deadline: Deadline) (wait: TimeSpan) =
    let payload: byte[] = Array.zeroCreate size
    let mutable msg = Msg()
    for finished in 0 .. count - 1 do
        check deadline finished
        msg.InitGC(payload, size)
        // PUSH blocks while the sink's queue and ours are full (the high-water marks): that is
        // the flow control being measured.
        send push &msg wait

// --- roles -----------------------------------------------------------------------------------

let runThrSink (args: Settings) =
    let deadline = Deadline(args.Timeout)
    let wait = waitOf args.Timeout
    use pull = configure (new PullSocket()) TimeSpan.Zero args.Size
    endpoint "bind" pull.Bind args.Endpoint
    emit "ready" [ "endpoint", box pull.Options.LastEndpoint ]
    emit "result" (sink pull args.Size args.Count deadline wait)
    emit "done" []

/// The source's linger: its last messages are still queued when the last send returns, and it
/// must not drop them by exiting; it waits for them at most its --timeout (no limit without one).
let sourceLinger (deadline: Deadline) =
    match deadline.RemainingMs with
    | Some left -> TimeSpan.FromMilliseconds(float left)
    | None -> Timeout.InfiniteTimeSpan

/// Close the sockets (the `use`s have run) and wait, as zmq_ctx_term does, until NetMQ's reaper
/// has handed what they still queue to TCP or their linger has run out. Program.run's own cleanup
/// does not block, and would drop the source's last messages.
let deliverQueued () = NetMQConfig.Cleanup(true)

/// Where the source hears about its connections (a monitor socket, inproc).
let HangUps = "inproc://perf-source-hang-ups"

/// Linger alone is not enough with NetMQ on .NET: it closes a TCP connection abortively (.NET
/// resets a socket that has an operation pending, and NetMQ always has a receive pending), and a
/// reset throws away whatever the sink has not read yet, in its kernel and in ours. With libzmq the
/// close is graceful and the kernel delivers the rest after we exit. So, after the last send, the
/// source waits for the sink to hang up (it does once it has all its messages), at most the
/// linger; the monitor reports the disconnection. The echo waits for the ping the same way.
let watchHangUps (push: NetMQSocket) =
    push.Monitor(HangUps, SocketEvents.Disconnected)
    let events = new PairSocket()
    events.Options.Linger <- TimeSpan.Zero
    events.Connect HangUps
    events

let runThrSource (args: Settings) =
    let deadline = Deadline(args.Timeout)
    let wait = waitOf args.Timeout
    do
        use push = configure (new PushSocket()) (sourceLinger deadline) args.Size
        use hangUps = watchHangUps push
        endpoint "connect" push.Connect args.Endpoint
        emit "ready" []
        source push args.Size args.Count deadline wait
        emit "done" []
        let mutable event: byte[] = null
        hangUps.TryReceiveFrameBytes(sourceLinger deadline, &event) |> ignore
        push.Options.Linger <- sourceLinger deadline // what is left of --timeout
    deliverQueued ()

let runLatEcho (args: Settings) =
    let deadline = Deadline(args.Timeout)
    let wait = waitOf args.Timeout
    do
        // Linger as for a source: the last reply is still queued when the loop ends.
        use rep = configure (new ResponseSocket()) (sourceLinger deadline) args.Size
        use hangUps = watchHangUps rep
        endpoint "bind" rep.Bind args.Endpoint
        emit "ready" [ "endpoint", box rep.Options.LastEndpoint ]
        let mutable msg = Msg()
        msg.InitEmpty()
        for finished in 0 .. args.Count - 1 do
            check deadline finished
            receive rep &msg args.Size wait
            // REP: the reply goes back to whoever asked, and must go before the next receive. The
            // message we got is the one we send: no copy (libzmq's local_lat does the same).
            send rep &msg wait
        msg.Close()
        emit "done" []
        // As the source does: wait for the ping to hang up before NetMQ resets the connection.
        let mutable event: byte[] = null
        hangUps.TryReceiveFrameBytes(sourceLinger deadline, &event) |> ignore
        rep.Options.Linger <- sourceLinger deadline
    deliverQueued ()

let runLatPing (args: Settings) =
    let deadline = Deadline(args.Timeout)
    let wait = waitOf args.Timeout
    use req = configure (new RequestSocket()) TimeSpan.Zero args.Size
    endpoint "connect" req.Connect args.Endpoint
    emit "ready" []
    let payload: byte[] = Array.zeroCreate args.Size
    let mutable request = Msg()
    let mutable reply = Msg()
    reply.InitEmpty()
    let started = Stopwatch.GetTimestamp()
    for finished in 0 .. args.Count - 1 do
        check deadline finished
        request.InitGC(payload, args.Size)
        // REQ is lockstep: strictly one request, then its reply, then the next request.
        send req &request wait
        receive req &reply args.Size wait
    let elapsed = seconds started (Stopwatch.GetTimestamp())
    reply.Close()
    emit "result" [ "size", box args.Size; "count", box args.Count; "seconds", box elapsed
                    "latency_us", box (elapsed * 1e6 / (2.0 * float args.Count)) ]
    emit "done" []

/// Both halves in one process: inproc:// is a lock-free queue between two threads that share
/// NetMQ's context, with no network stack and no I/O thread in between.
let runInprocThr (args: Settings) =
    let deadline = Deadline(args.Timeout)
    let wait = waitOf args.Timeout
    let result =
        use pull = configure (new PullSocket()) TimeSpan.Zero args.Size
        use push = configure (new PushSocket()) (sourceLinger deadline) args.Size
        endpoint "bind" pull.Bind args.Endpoint // inproc: bind before the peer connects
        endpoint "connect" push.Connect args.Endpoint
        emit "ready" []
        let failure = ref None // what stopped the sender, if anything
        // A socket belongs to one thread at a time: from here on push is the sender's (starting
        // the thread is the full memory barrier a socket needs to change threads).
        let sender =
            Thread(
                (fun () ->
                    try source push args.Size args.Count deadline wait
                    with error -> failure.Value <- Some error),
                Name = "perf-source"
            )
        sender.Start()
        let result =
            try sink pull args.Size args.Count deadline wait
            finally sender.Join() // bounded: every send waits at most --timeout
        match failure.Value with
        | Some error -> raise error
        | None -> result
    emit "result" result
    emit "done" []
    deliverQueued ()

/// Validate the command line of a perf role (Argu raises on a bad value) and return its run.
let role (args: ParseResults<PerfArgs>) : unit -> unit =
    let run (role: Settings -> unit) (settings: Settings) = fun () -> role settings
    match args.GetSubCommand() with
    | Thr_Sink sink -> run runThrSink (throughputSettings sink)
    | Thr_Source source -> run runThrSource (throughputSettings source)
    | Lat_Echo echo -> run runLatEcho (latencySettings echo)
    | Lat_Ping ping -> run runLatPing (latencySettings ping)
    | Inproc_Thr inproc -> run runInprocThr (inprocSettings inproc)
