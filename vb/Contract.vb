' The launch contract (examples/README.md) in VB: JSON Lines events on stdout, logs on stderr, the
' --timeout deadline, fatal failures, the stop signal, the flag types every example uses, and the
' socket steps of "One loop shape": poll, then receive or send without waiting. Security (the
' mechanisms and their flags) is in Security.vb, the socket monitors in SocketMonitor.vb.
Imports System.CommandLine
Imports System.IO
Imports System.Runtime.InteropServices
Imports System.Text
Imports System.Text.Encodings.Web
Imports System.Text.Json
Imports System.Threading
Imports NetMQ

''' <summary>Where a role's code reports an event: Emit (stdout), or a desk agent's pipe.</summary>
Public Delegate Sub Emitter(name As String, fields As (Key As String, Value As Object)())

Public Module Contract
    ' --- names and UTF-8 -------------------------------------------------------------------------

    ''' <summary>Strict UTF-8: no BOM, and invalid bytes throw instead of becoming U+FFFD.</summary>
    Public ReadOnly Utf8 As New UTF8Encoding(False, True)

    ''' <summary>Whether the bytes are strict UTF-8 (Utf8 throws on an invalid byte).</summary>
    Public Function IsUtf8(data As Byte()) As Boolean
        Try
            Utf8.GetString(data)  ' strict: invalid bytes throw
            Return True
        Catch problem As DecoderFallbackException
            Return False
        End Try
    End Function

    Public Const MaxName = 32  ' bytes of UTF-8: chat handles, subscriber names

    ''' <summary>Whether these bytes are a name: 1 to MaxName bytes of valid UTF-8 (a chat handle, a
    ''' subscriber's @name).</summary>
    Public Function IsName(data As Byte()) As Boolean
        Return data.Length >= 1 AndAlso data.Length <= MaxName AndAlso IsUtf8(data)
    End Function

    ''' <summary>Bytes for people to read: printable ASCII as it is, anything else as \xNN.</summary>
    Public Function Shown(bytes As IEnumerable(Of Byte), limit As Integer) As String
        Return String.Concat(bytes.Take(limit).Select(Function(b) If(b >= 32 AndAlso b < 127, ChrW(b).ToString(), $"\x{b:x2}")))
    End Function

    ' --- events on stdout, logs on stderr --------------------------------------------------------

    Private ReadOnly Stdout As Stream = Console.OpenStandardOutput()
    ' Non-ASCII text is written as raw UTF-8; "relaxed" only means not escaped for embedding in HTML.
    Private ReadOnly JsonOptions As New JsonSerializerOptions With {.Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping}

    ''' <summary>Write one event as one JSON line and flush it at once, so the orchestrator sees it live.
    ''' Any thread may: the role's, a desk agent's, a socket monitor's.</summary>
    Public Sub Emit(name As String, ParamArray fields As (Key As String, Value As Object)())
        WriteEventLine(EventJson(name, fields), name)
    End Sub

    ''' <summary>One event as one JSON object: UTF-8, no newline.</summary>
    Public Function EventJson(name As String, fields As IEnumerable(Of (Key As String, Value As Object))) As Byte()
        Dim line As New Dictionary(Of String, Object) From {{"event", name}}
        For Each field In fields
            line(field.Key) = field.Value
        Next
        Return JsonSerializer.SerializeToUtf8Bytes(line, JsonOptions)
    End Function

    Private _done As Boolean  ' `done` is out: read and written under the lock

    ''' <summary>Write an event already encoded as JSON (a desk agent's, from its pipe) as one line:
    ''' written and flushed whole under one lock, so the lines of several threads never interleave.
    ''' `name` is the event's, when it matters: no `socket-event` follows `done`.</summary>
    Public Sub WriteEventLine(json As Byte(), Optional name As String = Nothing)
        SyncLock Stdout
            If _done AndAlso name = "socket-event" Then Return
            Stdout.Write(json)
            Stdout.WriteByte(AscW(vbLf))
            Stdout.Flush()
            If name = "done" Then _done = True
        End SyncLock
    End Sub

    Public Sub Log(message As String)
        Console.Error.WriteLine(message)
    End Sub

    ' --- sockets: the steps of "One loop shape" --------------------------------------------------
    ' Every role polls the sockets it serves with a timeout that serves its timers, then receives
    ' without waiting. NetMQSelector is NetMQ's zmq_poll (socket.Poll is the same call for one
    ' socket); NetMQPoller would call a handler per ready socket instead, and leave the loop to the
    ' library: the roles keep the loop, so that it reads the same in every language.

    ''' <summary>Wait up to `timeout` for a message on `socket`: whether one is there.</summary>
    Public Function PollIn(socket As NetMQSocket, timeout As TimeSpan) As Boolean
        Return socket.Poll(PollEvents.PollIn, timeout).HasFlag(PollEvents.PollIn)
    End Function

    ''' <summary>Poll several sockets at once, as zmq_poll does: wait up to `timeout` for a message on
    ''' any of them and return the ones that have one (Nothing in `sockets` is skipped). One wait for
    ''' all of them: no busy loop, and no socket can starve another.</summary>
    Public Function PollIn(sockets As IEnumerable(Of NetMQSocket), timeout As TimeSpan) As HashSet(Of NetMQSocket)
        Dim items = sockets.Where(Function(socket) socket IsNot Nothing).
            Select(Function(socket) New NetMQSelector.Item(socket, PollEvents.PollIn)).ToArray()
        Call New NetMQSelector().Select(items, items.Length, CLng(timeout.TotalMilliseconds))
        Return items.Where(Function(item) item.ResultEvent.HasFlag(PollEvents.PollIn)).Select(Function(item) item.Socket).ToHashSet()
    End Function

    ''' <summary>
    ''' Every frame of one message if one is there now, without waiting; Nothing means "nothing after
    ''' all". A poll's PollIn is a hint, not a promise: REP drops a request it cannot route (no empty
    ''' delimiter frame) inside the receive, REQ a reply it cannot match, so a receive that waited
    ''' would stop the loop's timers, deadline and stop flag until the next message.
    ''' </summary>
    Public Function ReceiveIfReady(socket As NetMQSocket) As List(Of Byte())
        Dim frames As List(Of Byte()) = Nothing
        Return If(socket.TryReceiveMultipartBytes(TimeSpan.Zero, frames), frames, Nothing)
    End Function

    ''' <summary>One frame if one is there now, whatever its more flag (an XPUB's subscriptions are
    ''' read so: each frame is judged alone); Nothing if none.</summary>
    Public Function ReceiveFrameIfReady(socket As NetMQSocket) As Byte()
        Dim frame As Byte() = Nothing
        Return If(socket.TryReceiveFrameBytes(TimeSpan.Zero, frame), frame, Nothing)
    End Function

    ''' <summary>
    ''' Send on a PUSH socket, which blocks (mute) while no peer is connected or every peer's queue is
    ''' full (the high-water mark): wait for room with a poll (PollOut), a second at a time, never
    ''' past the deadline, then send without waiting; should the room be gone (the peer left), back to
    ''' the poll. Once the first frame of a message is queued, so are the others.
    ''' </summary>
    Public Sub SendWhenRoom(socket As NetMQSocket, frames As Byte()(), deadline As Deadline, what As String)
        Do
            If socket.Poll(PollEvents.PollOut, deadline.Cap(1000)).HasFlag(PollEvents.PollOut) AndAlso
               socket.TrySendMultipartBytes(TimeSpan.Zero, frames) Then Return
            If deadline.Expired() Then Throw New Failure("timeout", $"no room to send {what}")
        Loop
    End Sub

    ''' <summary>What NetMQ throws for an endpoint it cannot bind or connect: the address is in use or
    ''' the transport unknown (NetMQException), or it cannot even parse it (ArgumentException, or
    ''' FormatException for a port that is not a number).</summary>
    Public Function IsEndpointProblem(problem As Exception) As Boolean
        Return TypeOf problem Is NetMQException OrElse TypeOf problem Is ArgumentException OrElse TypeOf problem Is FormatException
    End Function

    ' --- the flag types every example uses (System.CommandLine options with one value each) -------

    Public Function Endpoint(name As String, defaultValue As String) As [Option](Of String)
        Return New [Option](Of String)(name) With {.DefaultValueFactory = Function(r) defaultValue}
    End Function

    ''' <summary>--monitor on|off, off by default: report every socket's connection events (SocketMonitor.vb).</summary>
    Public Function MonitorOption() As [Option](Of String)
        Dim opt As New [Option](Of String)("--monitor") With {.DefaultValueFactory = Function(r) "off"}
        opt.AcceptOnlyFromAmong("on", "off")
        Return opt
    End Function

    Public Function MonitorOn(args As ParseResult) As Boolean
        Return args.GetValue(Of String)("--monitor") = "on"
    End Function

    ''' <summary>An integer option (milliseconds or a count) no smaller than `minimum`, nor larger than `maximum`.</summary>
    Public Function AtLeast(name As String, minimum As Integer, defaultValue As Integer,
                            Optional maximum As Integer = Integer.MaxValue) As [Option](Of Integer)
        Return New [Option](Of Integer)(name) With {
            .DefaultValueFactory = Function(r) defaultValue,
            .CustomParser =
                Function(result)
                    Dim number As Integer
                    If Not Integer.TryParse(result.Tokens.Single().Value, number) Then
                        result.AddError($"{name} takes an integer, not '{result.Tokens.Single().Value}'")
                    ElseIf number < minimum Then
                        result.AddError($"{name} must be at least {minimum}")
                    ElseIf number > maximum Then
                        result.AddError($"{name} must be at most {maximum}")
                    End If
                    Return number
                End Function}
    End Function

    ''' <summary>An unsigned 64-bit integer (seeds, sequences, ids); required unless there is a default.</summary>
    Public Function UInt64Option(name As String, Optional defaultValue As ULong? = Nothing) As [Option](Of ULong)
        Dim opt As New [Option](Of ULong)(name) With {
            .CustomParser =
                Function(result)
                    Dim number As ULong
                    If Not ULong.TryParse(result.Tokens.Single().Value, number) Then
                        result.AddError($"{name} must be an unsigned 64-bit integer, not '{result.Tokens.Single().Value}'")
                    End If
                    Return number
                End Function}
        If defaultValue Is Nothing Then
            opt.Required = True
        Else
            opt.DefaultValueFactory = Function(result) defaultValue.Value
        End If
        Return opt
    End Function

    ''' <summary>A name of 1 to MaxName bytes of UTF-8; required unless there is a default.</summary>
    Public Function NameOption(name As String, Optional defaultValue As String = Nothing) As [Option](Of String)
        Dim opt As New [Option](Of String)(name) With {.Required = defaultValue Is Nothing}
        If defaultValue IsNot Nothing Then opt.DefaultValueFactory = Function(result) defaultValue
        opt.Validators.Add(
            Sub(result)
                Dim length = Utf8.GetByteCount(If(result.GetValueOrDefault(Of String)(), ""))
                If length < 1 OrElse length > MaxName Then result.AddError($"{name} takes 1 to {MaxName} bytes of UTF-8")
            End Sub)
        Return opt
    End Function
End Module

''' <summary>A fatal error: reported as an `error` event, then the role exits 1.</summary>
Public Class Failure
    Inherits Exception

    Public ReadOnly Property Code As String
    Public ReadOnly Property Reason As String

    Public Sub New(code As String, reason As String)
        MyBase.New(reason)
        Me.Code = code
        Me.Reason = reason
    End Sub
End Class

''' <summary>A bad combination of flags that the parser alone cannot see: exit 2, like a parse error.</summary>
Public Class Usage
    Inherits Exception

    Public Sub New(message As String)
        MyBase.New(message)
    End Sub
End Class

''' <summary>The role's --timeout: milliseconds left, or Nothing when there is no limit (0).</summary>
Public Class Deadline
    Private ReadOnly _end As Long?  ' on the monotonic millisecond clock

    Public Sub New(timeoutMs As Integer)
        If timeoutMs > 0 Then _end = Environment.TickCount64 + timeoutMs
    End Sub

    Public Function RemainingMs() As Long?
        If _end Is Nothing Then Return Nothing
        Return Math.Max(0, _end.Value - Environment.TickCount64)
    End Function

    Public Function Expired() As Boolean
        Return _end IsNot Nothing AndAlso Environment.TickCount64 >= _end.Value
    End Function

    ''' <summary>A poll timeout of at most `ms` that never runs past the deadline.</summary>
    Public Function Cap(ms As Long) As TimeSpan
        Dim left = RemainingMs()
        Return TimeSpan.FromMilliseconds(If(left Is Nothing, ms, Math.Min(ms, left.Value)))
    End Function
End Class

''' <summary>
''' SIGTERM and SIGINT only raise a flag, and call `onStop` if given; a server loop looks at the flag
''' at every turn, so it notices within one poll interval.
''' </summary>
Public NotInheritable Class StopSignal
    Implements IDisposable

    Private _raised As Boolean
    Private ReadOnly _onStop As Action
    Private ReadOnly _registrations As PosixSignalRegistration()

    Public Sub New(Optional onStop As Action = Nothing)
        _onStop = onStop
        _registrations = {PosixSignalRegistration.Create(PosixSignal.SIGTERM, AddressOf RaiseFlag),
                          PosixSignalRegistration.Create(PosixSignal.SIGINT, AddressOf RaiseFlag)}
    End Sub

    Public ReadOnly Property Raised As Boolean
        Get
            Return Volatile.Read(_raised)
        End Get
    End Property

    Private Sub RaiseFlag(context As PosixSignalContext)
        context.Cancel = True  ' do not terminate: the role stops by itself
        Volatile.Write(_raised, True)
        _onStop?.Invoke()
    End Sub

    Public Sub Dispose() Implements IDisposable.Dispose
        For Each registration In _registrations
            registration.Dispose()
        Next
    End Sub
End Class
