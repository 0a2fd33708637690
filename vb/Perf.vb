' perf: throughput and latency as libzmq's perf tools measure them (examples/perf/PROTOCOL.md).
'
' The hot loops are written the way NetMQ is fastest: one Msg struct reused for every receive (the
' library closes its old content and fills it in place), and every send a Msg that only points at one
' payload array made once (InitGC: no copy, no allocation). Timeouts are the TimeSpan given to
' TryReceive/TrySend, computed once from --timeout: NetMQ's RCVTIMEO/SNDTIMEO, no poll per message.
' The deadline is looked at once every 1000 messages; sizes are checked on every one.
'
' NetMQ's buffer pool stays at its default, which gives every received message a new array and
' leaves it to the garbage collector: its pooled BufferManager measured slower at 64 B (a C# sink
' fed by C: 2.7 M against 3.6 M msg/s) and no faster at 1 KiB. The same in C#, F# and VB. The
' runtime settings (ReadyToRun, tiered compilation off) are in ../Directory.Build.props.
Imports System.CommandLine
Imports System.Diagnostics
Imports System.Runtime.ExceptionServices
Imports System.Threading
Imports NetMQ
Imports NetMQ.Sockets

Public Module Perf
    Private Const ThroughputCount = 100000, LatencyCount = 10000
    Private Const DefaultEndpoint = "tcp://127.0.0.1:5570"
    Private Const InprocEndpoint = "inproc://perf"
    Private Const SourceMonitor = "inproc://perf-source-monitor"
    Private Const CheckEvery = 1000  ' messages between two looks at the deadline
    ' MaxMsgSize is --size, but at least this: the limit applies to the handshake's READY command too.
    Private Const MinMaxMessage = 256  ' bytes

    Public Function Roles() As Command
        Dim perf As New Command("perf", "throughput and latency, as libzmq's perf tools measure them")
        AddRole(perf, "thr-sink", "PULL: bind, receive --count messages, time them", ThroughputCount, True, AddressOf RunThrSink)
        AddRole(perf, "thr-source", "PUSH: connect, send --count messages", ThroughputCount, True, AddressOf RunThrSource)
        AddRole(perf, "lat-echo", "REP: bind, send back each of --count messages", LatencyCount, True, AddressOf RunLatEcho)
        AddRole(perf, "lat-ping", "REQ: connect, --count round trips, time them", LatencyCount, True, AddressOf RunLatPing)
        AddRole(perf, "inproc-thr", "PUSH and PULL on two threads of one process, over inproc://", ThroughputCount, False, AddressOf RunInprocThr)
        Return perf
    End Function

    Private Sub AddRole(perf As Command, name As String, help As String, count As Integer, hasEndpoint As Boolean,
                        run As Func(Of ParseResult, Integer))
        Dim role As New Command(name, help)
        If hasEndpoint Then role.Options.Add(Endpoint("--endpoint", DefaultEndpoint))
        role.Options.Add(AtLeast("--size", 0, defaultValue:=64))
        role.Options.Add(AtLeast("--count", 1, defaultValue:=count))
        role.Options.Add(AtLeast("--timeout", 0, defaultValue:=60000))
        role.SetAction(run)
        perf.Subcommands.Add(role)
    End Sub

    ''' <summary>The flags every perf role has.</summary>
    Private Structure Settings
        Public Size As Integer
        Public Count As Integer
        Public Deadline As Deadline  ' from --timeout; 0 means none
        ''' <summary>The longest one receive or send may wait: the role's --timeout, or forever.</summary>
        Public Wait As TimeSpan

        Public Shared Function From(args As ParseResult) As Settings
            Dim timeout = args.GetValue(Of Integer)("--timeout")
            Return New Settings With {
                .Size = args.GetValue(Of Integer)("--size"),
                .Count = args.GetValue(Of Integer)("--count"),
                .Deadline = New Deadline(timeout),
                .Wait = If(timeout > 0, TimeSpan.FromMilliseconds(timeout), SendReceiveConstants.InfiniteTimeout)}
        End Function
    End Structure

    ' --- sockets and messages -------------------------------------------------------------------

    ''' <summary>Set linger and the largest frame a peer may send (NetMQ drops a bigger one together with
    ''' its connection) on `socket`, then bind or connect it; a failure is error `bind` or `connect`.</summary>
    Private Sub Open(socket As NetMQSocket, endpoint As String, bind As Boolean, linger As TimeSpan, size As Integer)
        socket.Options.Linger = linger
        socket.Options.MaxMsgSize = Math.Max(size, MinMaxMessage)
        Try
            If bind Then socket.Bind(endpoint) Else socket.Connect(endpoint)
        Catch problem As Exception When IsEndpointProblem(problem)
            Throw New Failure(If(bind, "bind", "connect"), $"cannot {If(bind, "bind", "connect")} {endpoint}: {problem.Message}")
        End Try
    End Sub

    ''' <summary>What is left of --timeout, or infinite (-1 ms) without one.</summary>
    Private Function Remaining(deadline As Deadline) As TimeSpan
        Dim left = deadline.RemainingMs()
        Return If(left Is Nothing, SendReceiveConstants.InfiniteTimeout, TimeSpan.FromMilliseconds(left.Value))
    End Function

    ''' <summary>One message into `msg` (whose old content the library releases): one frame of exactly `size` bytes.</summary>
    Private Sub Receive(socket As NetMQSocket, ByRef msg As Msg, size As Integer, wait As TimeSpan, done As Integer)
        If Not socket.TryReceive(msg, wait) Then Throw New Failure("timeout", $"no message within the timeout ({done} received)")
        If msg.Size <> size OrElse msg.HasMore Then Throw WrongSize(msg, size)
    End Sub

    Private Function WrongSize(ByRef msg As Msg, size As Integer) As Failure
        Return New Failure("wrong-size", $"a message of {msg.Size} bytes{If(msg.HasMore, " and more frames", "")}, expected {size}")
    End Function

    ''' <summary>Send `msg` as one frame; on success the library takes its content and leaves it empty.</summary>
    Private Sub Send(socket As NetMQSocket, ByRef msg As Msg, wait As TimeSpan, done As Integer)
        If Not socket.TrySend(msg, wait, False) Then Throw New Failure("timeout", $"no room to send within the timeout ({done} sent)")
    End Sub

    ''' <summary>The deadline, looked at once every 1000 messages: cheap, and bounds the loop in time.</summary>
    Private Sub Check(deadline As Deadline, done As Integer)
        If done Mod CheckEvery = 0 AndAlso deadline.Expired() Then
            Throw New Failure("timeout", $"not finished by the deadline ({done} messages)")
        End If
    End Sub

    ''' <summary>Seconds between two Stopwatch timestamps (the monotonic high-resolution clock).</summary>
    Private Function Seconds(started As Long, ended As Long) As Double
        ' At least one tick of the clock, so that a rate stays finite: JSON has no infinity.
        Return Math.Max(ended - started, 1L) / Stopwatch.Frequency
    End Function

    Private Sub EmitThroughput(size As Integer, count As Integer, elapsed As Double)
        Dim rate = count / elapsed
        Emit("result", ("size", size), ("count", count), ("seconds", elapsed),
                       ("msg_per_s", rate), ("mbit_per_s", rate * size * 8 / 1000000.0))
    End Sub

    ' --- the two halves of a throughput measurement ----------------------------------------------

    ''' <summary>
    ''' Receive `count` messages; seconds from the first arrival to the last (libzmq's local_thr). PULL
    ''' queues up to its high-water mark (1000) of what arrived; past that NetMQ stops reading the
    ''' connection, and the source's PUSH blocks once its own 1000 are queued too.
    ''' </summary>
    Private Function Sink(pull As NetMQSocket, s As Settings) As Double
        Dim msg As New Msg()
        msg.InitEmpty()
        Try
            Receive(pull, msg, s.Size, s.Wait, 0)
            Dim started = Stopwatch.GetTimestamp()
            For done = 1 To s.Count - 1
                Check(s.Deadline, done)
                Receive(pull, msg, s.Size, s.Wait, done)
            Next
            Return Seconds(started, Stopwatch.GetTimestamp())
        Finally
            If msg.IsInitialised Then msg.Close()
        End Try
    End Function

    ''' <summary>Send `count` messages of `size` zero bytes.</summary>
    Private Sub Source(push As NetMQSocket, s As Settings)
        Dim payload = New Byte(s.Size - 1) {}  ' all zero, as in libzmq's tools; never written, so shared by every message
        Dim msg As New Msg()
        For done = 0 To s.Count - 1
            Check(s.Deadline, done)
            msg.InitGC(payload, s.Size)  ' the Msg only points at the payload: no copy, no allocation
            ' PUSH blocks while the sink's queue is full: the high-water mark (1000 messages by
            ' default, on our side and on the sink's) is the flow control being measured. The wait
            ' is bounded by --timeout.
            Send(push, msg, s.Wait, done)
        Next
    End Sub

    ' --- roles -----------------------------------------------------------------------------------

    Private Function RunThrSink(args As ParseResult) As Integer
        Dim s = Settings.From(args)
        Using pull As New PullSocket()  ' fair-queues from every connected PUSH; here, the one source
            Open(pull, args.GetValue(Of String)("--endpoint"), bind:=True, linger:=TimeSpan.Zero, size:=s.Size)
            Emit("ready", ("endpoint", pull.Options.LastEndpoint))
            EmitThroughput(s.Size, s.Count, Sink(pull, s))
            Emit("done")
        End Using
        Return 0
    End Function

    Private Function RunThrSource(args As ParseResult) As Integer
        Dim s = Settings.From(args)
        Using push As New PushSocket(), disconnects As New PairSocket()
            ' Before connecting: NetMQ reports each dropped connection on an inproc PAIR of ours.
            push.Monitor(SourceMonitor, SocketEvents.Disconnected)
            disconnects.Options.Linger = TimeSpan.Zero
            disconnects.Connect(SourceMonitor)
            ' The source's linger is what is left of --timeout (infinite without one): its last
            ' messages are still queued when its last send returns, and it must not drop them.
            Open(push, args.GetValue(Of String)("--endpoint"), bind:=False, linger:=Remaining(s.Deadline), size:=s.Size)
            Emit("ready")
            Source(push, s)
            Emit("done")
            ' With libzmq, linger alone keeps those last messages. With NetMQ it is not enough: closing
            ' waits until the queue is written to the kernel, but then .NET closes the TCP
            ' connection with a reset (SO_LINGER 0: it does so for a socket closed with an operation
            ' pending, and NetMQ always has a receive pending), and a reset makes the sink's kernel
            ' discard what it has not read yet: tens of thousands of messages at 64 B. So first wait
            ' for the sink to hang up (it has them all then), never past the deadline: a receive
            ' with a timeout, not a sleep.
            Dim notice As Byte() = Nothing
            If Not disconnects.TryReceiveFrameBytes(Remaining(s.Deadline), notice) Then
                Log("perf thr-source: the sink did not hang up before the deadline")
            End If
            push.Options.Linger = Remaining(s.Deadline)  ' again, now that less is left
        End Using
        ' NetMQ closes sockets in the background: terminating its context is what waits for the
        ' linger (Program's own Cleanup, after a failure, does not wait).
        NetMQConfig.Cleanup(block:=True)
        Return 0
    End Function

    Private Function RunLatEcho(args As ParseResult) As Integer
        Dim s = Settings.From(args)
        Using rep As New ResponseSocket()
            Open(rep, args.GetValue(Of String)("--endpoint"), bind:=True, linger:=TimeSpan.Zero, size:=s.Size)
            Emit("ready", ("endpoint", rep.Options.LastEndpoint))
            Dim msg As New Msg()
            msg.InitEmpty()
            For done = 0 To s.Count - 1
                Check(s.Deadline, done)
                ' REP's lockstep: receive a request, then send exactly one reply, which goes back to
                ' whoever asked. The reply is the request's own Msg, sent back without a copy.
                Receive(rep, msg, s.Size, s.Wait, done)
                Send(rep, msg, s.Wait, done)
            Next
            If msg.IsInitialised Then msg.Close()
            Emit("done")
        End Using
        Return 0
    End Function

    Private Function RunLatPing(args As ParseResult) As Integer
        Dim s = Settings.From(args)
        Using req As New RequestSocket()
            Open(req, args.GetValue(Of String)("--endpoint"), bind:=False, linger:=TimeSpan.Zero, size:=s.Size)
            Emit("ready")
            Dim payload = New Byte(s.Size - 1) {}
            Dim request As New Msg(), reply As New Msg()
            reply.InitEmpty()
            Dim started = Stopwatch.GetTimestamp()
            For done = 0 To s.Count - 1
                Check(s.Deadline, done)
                ' REQ's lockstep: one request, then its reply, then the next request. The round
                ' trip is the latency being measured, twice the one-way figure.
                request.InitGC(payload, s.Size)
                Send(req, request, s.Wait, done)
                Receive(req, reply, s.Size, s.Wait, done)
            Next
            Dim elapsed = Seconds(started, Stopwatch.GetTimestamp())
            reply.Close()
            Emit("result", ("size", s.Size), ("count", s.Count), ("seconds", elapsed),
                           ("latency_us", elapsed * 1000000.0 / (2.0 * s.Count)))
            Emit("done")
        End Using
        Return 0
    End Function

    ''' <summary>
    ''' Both halves in one process: inproc:// is a queue between two threads that NetMQ's one context
    ''' carries, with no network stack and no I/O thread at all. The source runs on a second thread, the
    ''' sink on this one; each socket is used by one thread only.
    ''' </summary>
    Private Function RunInprocThr(args As ParseResult) As Integer
        Dim s = Settings.From(args)
        Using pull As New PullSocket(), push As New PushSocket()
            Open(pull, InprocEndpoint, bind:=True, linger:=TimeSpan.Zero, size:=s.Size)  ' inproc: the bind comes first
            Open(push, InprocEndpoint, bind:=False, linger:=Remaining(s.Deadline), size:=s.Size)  ' a source's linger
            Emit("ready")
            Dim failure As Exception = Nothing
            ' The push socket moves to the sender thread here (Start is a full memory barrier); this
            ' thread touches it again only after Join, to close it.
            Dim sender As New Thread(
                Sub()
                    Try
                        Source(push, s)
                    Catch problem As Exception
                        failure = problem
                    End Try
                End Sub) With {.Name = "perf-source", .IsBackground = True}
            sender.Start()
            Dim elapsed As Double
            Try
                elapsed = Sink(pull, s)
            Finally
                sender.Join()  ' bounded: each of its sends waits at most --timeout
            End Try
            If failure IsNot Nothing Then ExceptionDispatchInfo.Throw(failure)
            EmitThroughput(s.Size, s.Count, elapsed)
            Emit("done")
        End Using
        Return 0
    End Function
End Module
