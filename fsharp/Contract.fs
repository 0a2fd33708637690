/// The launch contract (examples/README.md) in F#: JSON Lines events on stdout, logs on stderr, the
/// --timeout deadline, fatal failures, the stop signal, the flag checks every example uses, and the
/// socket helpers of "One loop shape": bind and connect, the poll, the non-blocking receives.
module Btb.Contract

open System
open System.Diagnostics
open System.IO
open System.Runtime.InteropServices
open System.Text
open System.Text.Encodings.Web
open System.Text.Json
open System.Threading
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

/// SIGTERM and SIGINT only raise a flag; a server loop looks at it at every turn (step 1 of "One
/// loop shape"), and a role with nothing to poll (the proxy) waits for it. .NET runs the handler on
/// a thread of its own: no poll is interrupted (no EINTR), so a loop that must notice the flag polls
/// with a timeout.
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

// --- sockets -----------------------------------------------------------------------------------

/// Bind or connect; a bad or busy endpoint is fatal (NetMQ throws several exception types).
let endpoint verb (attach: string -> unit) (address: string) =
    try attach address
    with error ->
        let why = match error with :? NetMQException as e -> string e.ErrorCode | e -> e.Message
        raise (Failure(verb, $"cannot {verb} {address}: {why}"))

/// The sockets a poll found readable (or writable, for an item polled for room).
type Ready(sockets: NetMQSocket list) =
    member _.Has(socket: NetMQSocket) = sockets |> List.exists (fun ready -> Object.ReferenceEquals(ready, socket))

/// Step 3 of "One loop shape": wait up to `ms` (-1: until something comes) for a message on any of
/// `sockets`, all at once, as zmq_poll does, and say which have one. NetMQSelector is the one-shot
/// poll under socket.Poll and NetMQPoller; NetMQPoller would call us back from its own loop, and
/// this one leaves the loop to the role, so that it reads as in the five other languages. A signal
/// never interrupts it (.NET handles signals on a thread of its own): no EINTR to handle here.
let poll (sockets: NetMQSocket list) (ms: int64) =
    let items = [| for socket in sockets -> NetMQSelector.Item(socket, PollEvents.PollIn) |]
    NetMQSelector().Select(items, items.Length, ms) |> ignore
    Ready [ for item in items do if item.ResultEvent.HasFlag PollEvents.PollIn then item.Socket ]

/// The same poll, each socket for the events it is given: PollOut waits for room to send (the desk's
/// PUSH, a pipe that takes no message before its peer connects). Ready has the sockets that have one.
let pollFor (sockets: (NetMQSocket * PollEvents) list) (ms: int64) =
    let items = [| for socket, events in sockets -> NetMQSelector.Item(socket, events) |]
    NetMQSelector().Select(items, items.Length, ms) |> ignore
    Ready [ for item in items do if item.ResultEvent &&& item.Event <> PollEvents.None then item.Socket ]

/// Step 4: every frame of one message if one is there now, without waiting; None means "nothing
/// after all". A poll's PollIn is a hint, not a promise: REP silently drops a request it cannot
/// route (no empty delimiter frame) inside the receive, REQ a reply it cannot match, so a blocking
/// receive after the poll could wait for the next message and stop the loop's timers, deadline and
/// stop flag. Once the first frame is in, so are the others: a message arrives whole or not at all.
let receiveIfReady (socket: NetMQSocket) =
    let mutable frames: Collections.Generic.List<byte[]> = null
    if socket.TryReceiveMultipartBytes(TimeSpan.Zero, &frames) then Some(List.ofSeq frames) else None

/// One frame if one is there now, whatever its more flag (the ticker publisher reads its XPUB so).
let receiveFrameIfReady (socket: NetMQSocket) =
    let mutable frame: byte[] = null
    if socket.TryReceiveFrameBytes(TimeSpan.Zero, &frame) then Some frame else None

let send (socket: NetMQSocket) (frames: byte[] list) = socket.SendMultipartBytes(frames)

/// Send on a PUSH socket, which blocks (the mute state) while no peer is connected or every queue is
/// at the high-water mark: wait for room with a poll, a second at a time, never past the deadline.
/// The send itself does not wait: should the room the poll saw be gone (the peer left), it is back
/// to the poll. Once the first frame is queued, ZeroMQ takes the whole message.
let sendWhenRoom (socket: NetMQSocket) (deadline: Deadline) (what: string) (frames: byte[] list) =
    let mutable sent = false
    while not sent do
        let wait = TimeSpan.FromMilliseconds(float (deadline.Cap 1000L))
        if socket.Poll(PollEvents.PollOut, wait).HasFlag PollEvents.PollOut then
            sent <- socket.TrySendMultipartBytes(TimeSpan.Zero, frames :> seq<byte[]>)
        if not sent && deadline.Expired then
            raise (Failure("timeout", $"no room to send {what}"))
