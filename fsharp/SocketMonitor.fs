/// `--monitor on`: a socket monitor on every socket whose endpoint a flag gives (examples/README.md,
/// "Socket monitors: `--monitor on`").
module Btb.SocketMonitor

open System
open System.Reflection
open System.Threading
open NetMQ
open NetMQ.Monitoring
open Btb.Contract

// [monitor] A socket's connection events (listening, connected, retried, accepted, disconnected,
// closed) never arrive on the socket itself: NetMQ publishes them on an inproc:// PAIR, and
// NetMQMonitor reads that PAIR and raises them as .NET events (NetMQ has no handshake events). It is
// attached before the socket's bind or connect, or `listening` and the first `connected` would be
// gone before anyone listened. It runs on a thread of its own, so the role's loop is the same with or
// without it; its lines share stdout with the role's, one whole line at a time, and none comes after
// `done` (Contract.writeEvent): the role has finished by then.

/// The contract's `kind` of each NetMQ event (NetMQ 4.0.4.5 has no handshake events).
let private kinds =
    dict [ SocketEvents.Connected, "connected"; SocketEvents.ConnectDelayed, "connect-delayed"
           SocketEvents.ConnectRetried, "connect-retried"; SocketEvents.Listening, "listening"
           SocketEvents.BindFailed, "bind-failed"; SocketEvents.Accepted, "accepted"
           SocketEvents.AcceptFailed, "accept-failed"; SocketEvents.Closed, "closed"
           SocketEvents.CloseFailed, "close-failed"; SocketEvents.Disconnected, "disconnected" ]

/// The event's number: a failure's ErrorCode, a retry's interval in ms; null for the events that
/// carry a socket (libzmq gives its file descriptor, NetMQ a .NET object).
let private valueOf (event: NetMQMonitorEventArgs) : obj =
    match event with
    | :? NetMQMonitorErrorEventArgs as failed -> box (int failed.ErrorCode)
    | :? NetMQMonitorIntervalEventArgs as retried -> box retried.Interval
    | _ -> null

let mutable private watched = 0 // numbers the monitors' inproc endpoints: one per socket in the process

/// Stop the socket's side of its monitor, as libzmq's zmq_socket_monitor(socket, NULL, 0) does. NetMQ
/// 4.0.4.5 needs it before the socket closes: closing a listener or a connecter, its I/O thread still
/// reports `closed` or `connect-retried`, and if NetMQConfig.Cleanup has stopped the monitor's PAIR by
/// then, that send throws inside the I/O thread, which never finishes closing: Cleanup waits forever.
/// NetMQ's own Monitor(null) stops it, but NetMQSocket.Monitor refuses null: reflection reaches it.
let private stopPublishing (socket: NetMQSocket) =
    let flags = BindingFlags.NonPublic ||| BindingFlags.Instance
    let core = typeof<NetMQSocket>.GetProperty("SocketHandle", flags).GetValue socket
    core.GetType().GetMethod("Monitor").Invoke(core, [| null; box (enum<SocketEvents> 0) |]) |> ignore

/// Watch `socket`, whose endpoint the flag `--flag` gives, when `--monitor` is on; call it before the
/// socket's bind or connect, and dispose what it returns in the socket's thread, before the socket.
/// Off, it does nothing.
let watch (socket: NetMQSocket) (flag: string) (on: bool) : IDisposable =
    if not on then
        { new IDisposable with member _.Dispose() = () }
    else
        let n = Interlocked.Increment &watched
        // The socket publishes its events on a PAIR bound to this endpoint; the monitor's own PAIR
        // connects to it.
        let monitor = new NetMQMonitor(socket, $"inproc://monitor.{flag}-{n}", SocketEvents.All)
        monitor.EventReceived.Add(fun event ->
            emit "socket-event" [ "socket", box flag; "kind", box kinds[event.SocketEvent]
                                  "endpoint", box event.Address; "value", valueOf event ])
        // A poller of its own, one thread per watched socket. AttachToPoller connects the monitor's
        // PAIR here, before the bind or connect: NetMQ drops an event while no peer is connected, and
        // StartAsync would connect it later, on its task's thread, after the first events had gone.
        let poller = new NetMQPoller()
        monitor.AttachToPoller poller
        poller.RunAsync($"monitor.{flag}", true) // a background thread: it never keeps the process
        { new IDisposable with
            member _.Dispose() =
                stopPublishing socket
                monitor.Dispose() // detaches the PAIR from the poller and closes it
                poller.Dispose() } // stops the poller's thread
