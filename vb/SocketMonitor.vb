' Socket monitors: `--monitor on` (examples/README.md, "Socket monitors").
Imports System.Reflection
Imports System.Threading
Imports NetMQ
Imports NetMQ.Monitoring

''' <summary>
''' The socket monitors of one role (or of one desk agent): with --monitor on, one per socket that
''' Attach is given; with off, Attach does nothing. Declare it after the sockets in a Using, so that
''' it is disposed before them, on their thread: each socket's monitoring must stop before it closes.
''' </summary>
Public NotInheritable Class SocketMonitor
    Implements IDisposable

    ' [monitor] A socket monitor narrates a socket's connections (connected, disconnected...): they
    ' arrive on the monitor, never on the socket itself. NetMQ publishes them on an inproc PAIR, and
    ' NetMQMonitor reads that PAIR and raises each as a .NET event (NetMQ 4.0.4.5 has no handshake
    ' events, so no handshake failure is ever seen). It is attached before bind or connect, or
    ' `listening` and the first `connected` are already gone. It runs on a thread of its own, a
    ' poller's, so the role's loop is the same with and without it; its lines and the role's share
    ' stdout one whole line at a time (Emit), and none is written after `done`: the role's last line
    ' stays its last.

    Private Shared _count As Integer  ' inproc endpoints are per process: the desk's threads each have monitors
    Private ReadOnly _enabled As Boolean
    Private ReadOnly _running As New List(Of (Socket As NetMQSocket, Monitor As NetMQMonitor, Poller As NetMQPoller))

    Public Sub New(enabled As Boolean)
        _enabled = enabled
    End Sub

    ''' <summary>Watch `socket`, whose endpoint the flag `flag` gives (`requests`, `chat-broadcasts`...):
    ''' after its options are set, before its bind or connect.</summary>
    Public Sub Attach(socket As NetMQSocket, flag As String)
        If Not _enabled Then Return
        Dim number = Interlocked.Increment(_count)
        Dim monitor As New NetMQMonitor(socket, $"inproc://monitor.{flag}-{number}", SocketEvents.All)
        AddHandler monitor.EventReceived, Sub(sender, e) Report(flag, e)
        ' AttachToPoller connects the monitor's end of the PAIR here and now: NetMQ drops an event
        ' while nobody is connected, and StartAsync would connect later, on its task, after our bind.
        Dim poller As New NetMQPoller()
        monitor.AttachToPoller(poller)
        poller.RunAsync($"monitor.{flag}", isBackgroundThread:=True)
        _running.Add((socket, monitor, poller))
    End Sub

    Private Shared ReadOnly Kinds As New Dictionary(Of SocketEvents, String) From {
        {SocketEvents.Connected, "connected"}, {SocketEvents.ConnectDelayed, "connect-delayed"},
        {SocketEvents.ConnectRetried, "connect-retried"}, {SocketEvents.Listening, "listening"},
        {SocketEvents.BindFailed, "bind-failed"}, {SocketEvents.Accepted, "accepted"},
        {SocketEvents.AcceptFailed, "accept-failed"}, {SocketEvents.Closed, "closed"},
        {SocketEvents.CloseFailed, "close-failed"}, {SocketEvents.Disconnected, "disconnected"}}

    ''' <summary>One event as a `socket-event`, on the monitor's thread. Its value: the ErrorCode of a
    ''' failure, the interval of a retry, and null for the events that carry a .NET socket (libzmq
    ''' gives a file descriptor there).</summary>
    Private Shared Sub Report(flag As String, e As NetMQMonitorEventArgs)
        Dim value As Object = Nothing
        If TypeOf e Is NetMQMonitorErrorEventArgs Then value = CInt(DirectCast(e, NetMQMonitorErrorEventArgs).ErrorCode)
        If TypeOf e Is NetMQMonitorIntervalEventArgs Then value = DirectCast(e, NetMQMonitorIntervalEventArgs).Interval
        Emit("socket-event", ("socket", flag), ("kind", Kinds(e.SocketEvent)), ("endpoint", e.Address), ("value", value))
    End Sub

    ''' <summary>For each watched socket, before it closes: (1) the socket stops publishing events;
    ''' (2) the monitor's PAIR is closed on its poller's thread, which owns it; then that thread ends.</summary>
    Public Sub Dispose() Implements IDisposable.Dispose
        For Each running In _running
            StopPublishing(running.Socket)
            Task.Factory.StartNew(AddressOf running.Monitor.Dispose, CancellationToken.None, TaskCreationOptions.None, running.Poller).Wait()
            running.Poller.Dispose()
        Next
        _running.Clear()
    End Sub

    ''' <summary>
    ''' Stop the socket's monitoring, as libzmq's zmq_socket_monitor(socket, NULL, 0) does. An event
    ''' that NetMQ 4.0.4.5 raises while the context terminates (the `closed` of a listener that the
    ''' socket's close tears down) throws on its I/O thread, which then never stops, nor does
    ''' NetMQConfig.Cleanup (zeromq/netmq#539). NetMQ's public Monitor() refuses the null: its internal
    ''' one, SocketBase.Monitor, takes it.
    ''' </summary>
    Private Shared Sub StopPublishing(socket As NetMQSocket)
        Dim handle = GetType(NetMQSocket).GetProperty("SocketHandle", BindingFlags.Instance Or BindingFlags.NonPublic).GetValue(socket)
        handle.GetType().GetMethod("Monitor", {GetType(String), GetType(SocketEvents)}).Invoke(handle, New Object() {Nothing, SocketEvents.All})
    End Sub
End Class
