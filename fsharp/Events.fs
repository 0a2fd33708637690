/// The launch contract (examples/README.md) in F#: JSON Lines events on stdout, logs on stderr, the
/// --timeout deadline, fatal failures, the stop signal, the flag checks (the security flags' too)
/// and the socket helpers every example uses.
module Btb.Events

open System
open System.Diagnostics
open System.IO
open System.Runtime.InteropServices
open System.Text
open System.Text.Encodings.Web
open System.Text.Json
open System.Threading
open Argu
open NetMQ

/// Strict UTF-8: no byte order mark, and invalid bytes throw instead of becoming U+FFFD.
let utf8 = UTF8Encoding(false, true)

let private out = new StreamWriter(Console.OpenStandardOutput(), utf8, AutoFlush = true)
let private json = JsonSerializerOptions(Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping)

/// One event as one JSON object, on one line: what `emit` writes, and what a desk agent sends up
/// its pipe for the main thread to write.
let eventJson (event: string) (fields: (string * obj) list) =
    JsonSerializer.Serialize(dict (("event", box event) :: fields), json)

let private stdoutLock = obj ()
let mutable private doneWritten = false

/// Write one event's line to stdout and flush it at once, so the orchestrator sees it live. Socket
/// monitors write from threads of their own: the lock keeps every line whole, and once `done` is
/// out, their `socket-event` lines are dropped (the contract: nothing after `done`).
let writeEvent (event: string) (line: string) =
    lock stdoutLock (fun () ->
        if not (doneWritten && event = "socket-event") then
            out.WriteLine line
        if event = "done" then
            doneWritten <- true)

/// Write one event as one JSON line.
let emit (event: string) (fields: (string * obj) list) = writeEvent event (eventJson event fields)

let log (message: string) = eprintfn "%s" message

/// A fatal error: reported as an `error` event, then the role exits 1.
exception Failure of code: string * reason: string

let private clock = Stopwatch.StartNew()

/// Monotonic milliseconds since the program started.
let nowMs () = clock.ElapsedMilliseconds

/// The role's --timeout: milliseconds left, or None when there is no limit (0).
type Deadline(timeoutMs: int) =
    let ends = if timeoutMs > 0 then Some(nowMs () + int64 timeoutMs) else None

    member _.RemainingMs = ends |> Option.map (fun e -> max 0L (e - nowMs ()))

    member _.Expired = ends |> Option.exists (fun e -> nowMs () >= e)

    /// A poll timeout of at most `ms` that never runs past the deadline.
    member this.Cap(ms: int64) =
        match this.RemainingMs with
        | Some left -> min ms left
        | None -> ms

/// SIGTERM and SIGINT only raise a flag; a server loop looks at it after every poll, and a role
/// with nothing to poll (the proxy) waits for it.
type StopSignal() =
    let raised = new ManualResetEventSlim(false)
    let raiseFlag (context: PosixSignalContext) =
        context.Cancel <- true // keep running: the role finishes what it is doing and stops
        raised.Set()
    let registrations =
        [ PosixSignalRegistration.Create(PosixSignal.SIGTERM, raiseFlag)
          PosixSignalRegistration.Create(PosixSignal.SIGINT, raiseFlag) ]
    member _.Raised = raised.IsSet
    /// Block until the signal comes (true) or `ms` have passed (false); None: as long as it takes.
    member _.Wait(ms: int64 option) =
        match ms with
        | Some ms -> raised.Wait(TimeSpan.FromMilliseconds(float ms))
        | None -> raised.Wait(Timeout.Infinite)
    interface IDisposable with
        member _.Dispose() =
            registrations |> List.iter (fun r -> r.Dispose())
            raised.Dispose()

// --- flag checks: Argu runs them on a flag's value (PostProcessResult); a failure is a bad
// command line ----------------------------------------------------------------------------------

/// An integer (milliseconds or a count) no smaller than `minimum`.
let atLeast minimum (number: int) =
    if number < minimum then failwithf "must be at least %d" minimum
    number

/// `--monitor`: on or off (README's "Socket monitors").
let onOff (value: string) =
    match value with
    | "on" -> true
    | "off" -> false
    | _ -> failwith "expected on or off"

let MaxName = 32 // bytes of UTF-8: chat handles, subscriber names

let name (value: string) =
    if not (1 <= utf8.GetByteCount value && utf8.GetByteCount value <= MaxName) then
        failwithf "a name is 1 to %d bytes of UTF-8" MaxName
    value

// --- security flags (examples/README.md, "Security") -------------------------------------------

/// The mechanism a role runs under, and its CURVE keys in Z85 (each checked) when it is `curve`.
type Security =
    { Mechanism: string; CurveSecret: string option; CurvePublic: string option; CurveServer: string option }

/// `--security`: one of ZMTP 3's three mechanisms.
let mechanism (value: string) =
    match value with
    | "null" | "plain" | "curve" -> value
    | _ -> failwith "expected null, plain or curve"

// The Z85 alphabet (RFC 32): 85 printable characters, never ',' nor a space or a quote.
let private z85 = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"

/// Each group of 5 characters of Z85 is a number in base 85 that must fit in 4 bytes.
let private fitsFourBytes (group: char[]) =
    group |> Array.fold (fun value c -> value * 85UL + uint64 (z85.IndexOf c)) 0UL <= 0xFFFFFFFFUL

/// A CURVE key is 40 characters of Z85 that encode 32 bytes.
let curveKey (value: string) =
    if value.Length <> 40 || not (value |> Seq.forall z85.Contains)
       || not (value |> Seq.chunkBySize 5 |> Seq.forall fitsFourBytes) then
        failwith "a CURVE key is 40 characters of Z85 that encode 32 bytes"
    value

/// Comma-separated CURVE keys (Z85 never uses ',').
let curveKeys (value: string) = value.Split ',' |> Seq.map curveKey |> List.ofSeq

/// A PLAIN username or password: 1 to 255 bytes of UTF-8 (ZMTP frames each with one length byte).
let credential (value: string) =
    if not (1 <= utf8.GetByteCount value && utf8.GetByteCount value <= 255) then
        failwith "a PLAIN username or password is 1 to 255 bytes of UTF-8"
    value

/// What NetMQ cannot do is a bad command line (exit 2), never a silent downgrade to less security.
let netmqCan (args: ParseResults<'T>) (mechanism: string) (curveClients: bool) =
    if mechanism = "plain" then
        args.Raise("--security plain: NetMQ 4.0.4.5 does not implement the PLAIN mechanism")
    if mechanism = "curve" && curveClients then
        args.Raise("--curve-clients: NetMQ 4.0.4.5 has no ZAP handler, so it cannot restrict client keys")

/// Under `curve`, a key the role needs: missing, it is a bad command line (exit 2). Other
/// mechanisms ignore it.
let curveNeeds (args: ParseResults<'T>) (mechanism: string) (flag: string) (key: string option) =
    match mechanism, key with
    | "curve", None -> args.Raise($"--security curve needs {flag}")
    | "curve", key -> key
    | _ -> None

// --- sockets -----------------------------------------------------------------------------------

/// Wait up to `ms` (None: as long as it takes) for a message to be ready on `socket`.
let pollIn (socket: NetMQSocket) (ms: int64 option) =
    let timeout = ms |> Option.map float |> Option.defaultValue -1.0 |> TimeSpan.FromMilliseconds
    socket.Poll(PollEvents.PollIn, timeout).HasFlag(PollEvents.PollIn)

/// Every frame of one message if one is there now, without waiting: None means "nothing after
/// all". A poll's PollIn is a hint, not a promise: REP silently drops a request it cannot route (no
/// empty delimiter frame) inside the receive, REQ a reply it cannot match, so a blocking receive
/// after the poll could wait for the next message and stop the loop's heartbeat, deadline and stop
/// flag. Once the first frame is in, so are the others: ZeroMQ delivers a message whole or not at all.
let receiveIfReady (socket: NetMQSocket) =
    let mutable frames: Collections.Generic.List<byte[]> = null
    if socket.TryReceiveMultipartBytes(TimeSpan.Zero, &frames) then Some(List.ofSeq frames) else None

/// One frame if one is there now, whatever its more flag (the ticker publisher reads its XPUB so).
let receiveFrameIfReady (socket: NetMQSocket) =
    let mutable frame: byte[] = null
    if socket.TryReceiveFrameBytes(TimeSpan.Zero, &frame) then Some frame else None

/// Wait up to `ms` (None: as long as it takes) for a message and take it: None when none came.
let receiveWithin (socket: NetMQSocket) (ms: int64 option) =
    if pollIn socket ms then receiveIfReady socket else None

/// The next message on `socket`, or None once the deadline has passed (no deadline: wait for it).
let receiveBefore (socket: NetMQSocket) (deadline: Deadline) =
    let mutable message = None
    while message.IsNone && not deadline.Expired do
        message <- receiveWithin socket deadline.RemainingMs
    message

let send (socket: NetMQSocket) (frames: byte[] list) = socket.SendMultipartBytes(frames)

/// Bind or connect; a bad or busy endpoint is fatal (NetMQ throws several exception types).
let endpoint verb (attach: string -> unit) (address: string) =
    try attach address
    with error ->
        let why = match error with :? NetMQException as e -> string e.ErrorCode | e -> e.Message
        raise (Failure(verb, $"cannot {verb} {address}: {why}"))

/// Poll several sockets at once, as zmq_poll does: wait up to `ms` for a message on any of them and
/// return the ones that have one. NetMQSelector is the one-shot poll under socket.Poll and
/// NetMQPoller; unlike NetMQPoller it leaves the loop to us, so that the program keeps the same shape
/// in every language. One wait for all: no busy loop.
let pollInAny (sockets: NetMQSocket list) (ms: int64) =
    let items = [| for socket in sockets -> NetMQSelector.Item(socket, PollEvents.PollIn) |]
    NetMQSelector().Select(items, items.Length, ms) |> ignore
    [ for item in items do if item.ResultEvent.HasFlag PollEvents.PollIn then item.Socket ]

/// Send on a PUSH socket, which blocks while no peer is connected or every queue is full (the
/// high-water mark): wait for room, a second at a time, never past the deadline. Only the first frame
/// can wait; once it is queued, ZeroMQ takes the whole message.
let sendWhenRoom (socket: NetMQSocket) (deadline: Deadline) (what: string) (frames: byte[] list) =
    let tryFor (ms: int64) =
        socket.TrySendMultipartBytes(TimeSpan.FromMilliseconds(float ms), frames :> seq<byte[]>)
    while not (tryFor (deadline.Cap 1000L)) do
        if deadline.Expired then
            raise (Failure("timeout", $"no room to send {what}"))
