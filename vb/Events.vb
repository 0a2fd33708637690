' The launch contract (examples/README.md) in VB: JSON Lines events on stdout, logs on stderr, the
' --timeout deadline, fatal failures, the stop signal, the flag types every example uses, the
' security flags, and sending on a socket that may have no room.
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

Public Module Events
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

    ''' <summary>Bytes for people to read: printable ASCII as it is, anything else as \xNN.</summary>
    Public Function Shown(bytes As IEnumerable(Of Byte), limit As Integer) As String
        Return String.Concat(bytes.Take(limit).Select(Function(b) If(b >= 32 AndAlso b < 127, ChrW(b).ToString(), $"\x{b:x2}")))
    End Function

    ''' <summary>
    ''' Send on a PUSH socket, which blocks while no peer is connected or every peer's queue is full
    ''' (the high-water mark): wait for room, a second at a time, never past the deadline. A multipart
    ''' message goes out whole or not at all: once its first frame is queued, so are the others.
    ''' </summary>
    Public Sub SendWhenRoom(socket As IOutgoingSocket, frames As Byte()(), deadline As Deadline, what As String)
        Do Until socket.TrySendMultipartBytes(deadline.Cap(1000), frames)
            If deadline.Expired() Then Throw New Failure("timeout", $"no room to send {what}")
        Loop
    End Sub
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

''' <summary>The mechanism a role runs under and its CURVE keys (Z85, already checked) when it is curve.</summary>
Public Class Security
    Public ReadOnly Property Mechanism As String
    Public ReadOnly Property CurveSecret As String
    Public ReadOnly Property CurvePublic As String
    Public ReadOnly Property CurveServer As String

    Public Sub New(mechanism As String, curveSecret As String, curvePublic As String, curveServer As String)
        Me.Mechanism = mechanism
        Me.CurveSecret = curveSecret
        Me.CurvePublic = curvePublic
        Me.CurveServer = curveServer
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
''' Orders strings by their UTF-8 bytes (unsigned, shorter prefix first), as the protocol sorts
''' handles. .NET's ordinal order compares UTF-16 code units, which differs above U+FFFF.
''' </summary>
Public Class Utf8Order
    Implements IComparer(Of String)

    Public Shared ReadOnly Instance As New Utf8Order()

    Public Function Compare(x As String, y As String) As Integer Implements IComparer(Of String).Compare
        Dim a = Utf8.GetBytes(x), b = Utf8.GetBytes(y)
        For i = 0 To Math.Min(a.Length, b.Length) - 1
            If a(i) <> b(i) Then Return a(i).CompareTo(b(i))
        Next
        Return a.Length.CompareTo(b.Length)
    End Function
End Class

''' <summary>
''' SIGTERM and SIGINT only raise a flag, and call `onStop` if given; a server loop looks at the flag
''' after every poll.
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

''' <summary>What NetMQ throws for an endpoint it cannot bind or connect: the address is in use or
''' the transport unknown (NetMQException), or it cannot even parse it (ArgumentException, or
''' FormatException for a port that is not a number).</summary>
Public Module Endpoints
    Public Function IsEndpointProblem(problem As Exception) As Boolean
        Return TypeOf problem Is NetMQException OrElse TypeOf problem Is ArgumentException OrElse TypeOf problem Is FormatException
    End Function
End Module

''' <summary>The flag types every example uses (System.CommandLine options with one value each).</summary>
Public Module Flags
    Public Const MaxName = 32  ' bytes of UTF-8: chat handles, subscriber names

    ''' <summary>Whether these bytes are a name: 1 to MaxName bytes of valid UTF-8 (a chat handle, a
    ''' subscriber's @name).</summary>
    Public Function IsName(data As Byte()) As Boolean
        Return data.Length >= 1 AndAlso data.Length <= MaxName AndAlso IsUtf8(data)
    End Function

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

    ' --- security flags (examples/README.md, "Security") ---------------------------------------

    ' The Z85 alphabet (RFC 32): 85 printable characters, never ',' nor a space or a quote.
    Private Const Z85 = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"

    ''' <summary>A CURVE key is 40 characters of Z85 that encode 32 bytes: each group of 5 characters
    ''' is a number in base 85 that fits in 4 bytes.</summary>
    Private Function IsCurveKey(text As String) As Boolean
        Return text.Length = 40 AndAlso text.All(Function(c) Z85.Contains(c)) AndAlso
            text.Chunk(5).All(Function(group) group.Aggregate(0UL, Function(value, c) value * 85UL + CULng(Z85.IndexOf(c))) <= UInteger.MaxValue)
    End Function

    ''' <summary>A string flag whose value must pass `valid`; otherwise `message` is the parser's error.</summary>
    Private Function Checked(name As String, valid As Func(Of String, Boolean), message As String) As [Option](Of String)
        Dim opt As New [Option](Of String)(name)
        opt.Validators.Add(
            Sub(result)
                If Not valid(result.GetValueOrDefault(Of String)()) Then result.AddError($"{name} takes {message}")
            End Sub)
        Return opt
    End Function

    Private Function CurveKey(name As String) As [Option](Of String)
        Return Checked(name, AddressOf IsCurveKey, "a CURVE key: 40 characters of Z85 that encode 32 bytes")
    End Function

    ''' <summary>A PLAIN username or password: 1 to 255 bytes of UTF-8 (ZMTP frames each with one length byte).</summary>
    Private Function Credential(name As String) As [Option](Of String)
        Return Checked(name, Function(text) Utf8.GetByteCount(text) >= 1 AndAlso Utf8.GetByteCount(text) <= 255,
                       "1 to 255 bytes of UTF-8")
    End Function

    ''' <summary>Comma-separated CURVE keys (Z85 never uses ',').</summary>
    Private Function CurveKeys(name As String) As [Option](Of String)
        Return Checked(name, Function(text) text.Split(","c).All(AddressOf IsCurveKey),
                       "CURVE keys separated by ',': 40 characters of Z85 each")
    End Function

    ''' <summary>The security flags of a server or a client role: --security, the CURVE keys, and the
    ''' PLAIN username and password, which NetMQ cannot use but the command line has in every language.</summary>
    Public Sub AddSecurity(command As Command, server As Boolean)
        Dim mechanism As New [Option](Of String)("--security") With {.DefaultValueFactory = Function(r) "null"}
        mechanism.AcceptOnlyFromAmong("null", "plain", "curve")
        command.Options.Add(mechanism)
        command.Options.Add(CurveKey("--curve-secret"))
        If server Then
            command.Options.Add(CurveKeys("--curve-clients"))
        Else
            command.Options.Add(CurveKey("--curve-public"))
            command.Options.Add(CurveKey("--curve-server"))
        End If
        command.Options.Add(Credential("--plain-user"))
        command.Options.Add(Credential("--plain-password"))
    End Sub

    ''' <summary>
    ''' The chosen mechanism and its keys. What is missing for it, or what NetMQ cannot do, is a
    ''' Usage error (exit 2): never a silent downgrade to less security.
    ''' </summary>
    Public Function ReadSecurity(args As ParseResult, server As Boolean) As Security
        Dim chosen = args.GetValue(Of String)("--security")
        If chosen = "plain" Then Throw New Usage("--security plain: NetMQ 4.0.4.5 does not implement the PLAIN mechanism")
        If server AndAlso chosen = "curve" AndAlso args.GetValue(Of String)("--curve-clients") IsNot Nothing Then
            Throw New Usage("--curve-clients: NetMQ 4.0.4.5 has no ZAP handler, so it cannot restrict client keys")
        End If
        Dim required =
            Function(name As String) As String
                If chosen <> "curve" Then Return Nothing
                Dim key = args.GetValue(Of String)(name)
                If key Is Nothing Then Throw New Usage($"--security curve needs {name}")
                Return key
            End Function
        If server Then Return New Security(chosen, required("--curve-secret"), Nothing, Nothing)
        Return New Security(chosen, required("--curve-secret"), required("--curve-public"), required("--curve-server"))
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
