// Socket monitors: `--monitor on` (examples/README.md, "Socket monitors").
using System.Reflection;
using NetMQ;
using NetMQ.Monitoring;

/// <summary>A socket monitor narrates one socket's connections: NetMQ publishes them on an inproc PAIR
/// and <see cref="NetMQMonitor"/> raises them as .NET events, each reported as a `socket-event`. It is
/// attached before the socket's bind or connect, so that `listening` and the first `connected` are seen.
/// It runs on a thread of its own, so the role's loop is the same with and without --monitor; its lines
/// share stdout with the role's, whole (<see cref="Contract.Emit"/>), and none comes after `done`: the
/// role's story ends there.</summary>
sealed class SocketMonitor : IDisposable
{
    static int count; // monitors in the process: each gets an inproc endpoint of its own (the desk has many)

    readonly NetMQSocket watched;
    readonly NetMQMonitor monitor;
    readonly NetMQPoller poller = new(); // the monitor's thread, not the role's loop: NetMQMonitor's own idiom
    bool disposed;

    /// <summary>Watch <paramref name="socket"/>, whose endpoint the flag <paramref name="flag"/> gives
    /// (without its dashes); null, nothing watched, when --monitor is off. Before bind or connect, on the
    /// socket's own thread; dispose it there too, before the socket.</summary>
    public static SocketMonitor? Attach(NetMQSocket socket, string flag, bool on) => on ? new(socket, flag) : null;

    SocketMonitor(NetMQSocket socket, string flag)
    {
        // [monitor] A socket's connection events (listening, connected, disconnected, retries...) never
        // arrive on the socket itself: NetMQ publishes them on a monitor PAIR over inproc, read here on
        // a thread of its own. NetMQ 4.0.4.5 has no handshake events: a refused handshake shows nothing.
        watched = socket;
        monitor = new NetMQMonitor(socket, $"inproc://monitor.{flag}-{Interlocked.Increment(ref count)}", SocketEvents.All);
        monitor.EventReceived += (_, e) => Contract.Emit("socket-event", new
        {
            socket = flag, kind = Kind(e.SocketEvent), endpoint = e.Address,
            value = e switch
            {
                NetMQMonitorErrorEventArgs error => (int)error.ErrorCode, // the failures
                NetMQMonitorIntervalEventArgs retry => retry.Interval, // connect-retried: ms to the next try
                _ => (int?)null, // NetMQ has no file descriptor to show
            },
        });
        // Not StartAsync: it connects the monitor's PAIR on a thread of its own, maybe after our bind, and
        // NetMQ drops an event that finds no peer. Attached to a poller, the PAIR connects here, at once.
        monitor.AttachToPoller(poller);
        poller.RunAsync($"monitor.{flag}", isBackgroundThread: true);
    }

    static string Kind(SocketEvents socketEvent) => socketEvent switch
    {
        SocketEvents.Connected => "connected",
        SocketEvents.ConnectDelayed => "connect-delayed",
        SocketEvents.ConnectRetried => "connect-retried",
        SocketEvents.Listening => "listening",
        SocketEvents.BindFailed => "bind-failed",
        SocketEvents.Accepted => "accepted",
        SocketEvents.AcceptFailed => "accept-failed",
        SocketEvents.Closed => "closed",
        SocketEvents.CloseFailed => "close-failed",
        SocketEvents.Disconnected => "disconnected",
        _ => socketEvent.ToString(),
    };

    public void Dispose()
    {
        if (disposed)
            return;
        disposed = true;
        // 1. The socket stops publishing events, as libzmq's zmq_socket_monitor(socket, NULL, 0) does. An
        // event that NetMQ raises while the context terminates (the `closed` of a listener that the close
        // of the socket tears down) throws on its I/O thread, which then never stops, nor does the process
        // (zeromq/netmq#539). NetMQ's public Monitor() refuses the null: its internal one takes it.
        object handle = typeof(NetMQSocket).GetProperty("SocketHandle", BindingFlags.Instance | BindingFlags.NonPublic)!
            .GetValue(watched)!;
        handle.GetType().GetMethod("Monitor", [typeof(string), typeof(SocketEvents)])!.Invoke(handle, [null, SocketEvents.All]);
        // 2. Our PAIR, closed on the poller's thread, which owns it; then the poller's thread ends.
        Task.Factory.StartNew(monitor.Dispose, CancellationToken.None, TaskCreationOptions.None, poller).Wait();
        poller.Dispose();
    }
}
