' web: the desk's page over a STREAM socket (examples/desk/PROTOCOL.md, "The web page: HTTP over a
' ZMQ_STREAM socket"). STREAM is the socket for a peer that does not speak ZeroMQ: raw TCP bytes
' both ways, no ZMTP, no framing. Every message is [identity, bytes], one identity per TCP
' connection; sending [identity, bytes] writes the bytes to that connection, [identity, ""] closes
' it. This file is a small HTTP/1.1 server on top of it, owned by the desk's main thread: it parses
' requests, answers them, hands the page's commands to the desk, and feeds the event streams.
Imports System.IO
Imports System.Text
Imports NetMQ
Imports NetMQ.Sockets

''' <summary>What the desk does with a page command: Code 204 once it is handed to an agent, or
''' 400/409 with Reason, one line for people.</summary>
Public Delegate Function CommandHandler(target As String, body As Byte()) As (Code As Integer, Reason As String)

Public NotInheritable Class Web
    Implements IDisposable

    Private Const MaxHead = 8192  ' bytes of request line and headers, CRLF CRLF included
    Private Const MaxBody = 4096  ' bytes of Content-Length
    Private Const RequestMs = 5000  ' for a whole request, from its first message
    Private Const CloseMs = 1000  ' for the client to close after a response, before we do
    Private Const MaxConnections = 256
    Private Const MaxPerTurn = 100  ' messages read in one call: the pipes get their turn too
    Private Const MaxReplayLines = 1000  ' the ring of recent lines
    Private Const MaxReplayKeys = 256  ' the latest line of a tick, an applied key, the progress

    ' --- 1. the page -----------------------------------------------------------------------------

    ''' <summary>examples/desk/page.html, built into the program (btb.vbproj: an EmbeddedResource
    ''' named page.html) and read once; served byte for byte.</summary>
    Private Shared ReadOnly Page As Byte() = ReadPage()

    Private Shared Function ReadPage() As Byte()
        Using resource = GetType(Web).Assembly.GetManifestResourceStream("page.html"), copy As New MemoryStream()
            resource.CopyTo(copy)
            Return copy.ToArray()
        End Using
    End Function

    ' --- 2. the socket ---------------------------------------------------------------------------

    Public ReadOnly Socket As New StreamSocket()
    Public ReadOnly Endpoint As String  ' as bound: a wildcard port resolved
    Private ReadOnly _monitor As SocketMonitor

    ''' <summary>Bind the STREAM socket; a failed bind is the desk's `error` `bind` (exit 1).</summary>
    Public Sub New(endpoint As String, monitorOn As Boolean)
        ' Linger 0: at close, what is still queued for a browser (an open event stream) is not
        ' worth waiting for.
        Socket.Options.Linger = TimeSpan.Zero
        ' The send high-water mark is per connection: at most 1000 messages wait for one browser.
        ' It is the default, set on purpose: it is what bounds a slow reader (Publish).
        Socket.Options.SendHighWatermark = 1000
        _monitor = New SocketMonitor(monitorOn)
        _monitor.Attach(Socket, "http")
        Try
            Socket.Bind(endpoint)
        Catch problem As Exception When IsEndpointProblem(problem)
            _monitor.Dispose()  ' before the socket closes
            Socket.Dispose()
            Throw New Failure("bind", $"cannot bind {endpoint}: {problem.Message}")
        End Try
        Me.Endpoint = Socket.Options.LastEndpoint
    End Sub

    ' --- the connections -------------------------------------------------------------------------

    Private Enum Phase
        Reading  ' its request is coming in
        Answered  ' a response went out: the client closes, or we do at the deadline
        Streaming  ' the event stream: every line the desk writes
        Closing  ' a stream that refused an event: closed once its queue takes the close
    End Enum

    Private NotInheritable Class Connection
        Public ReadOnly Id As Byte()
        Public Request As New MemoryStream()  ' what came of the request, at most MaxHead + MaxBody bytes
        Public Deadline As Long
        Public Phase As Phase = Phase.Reading

        Public Sub New(id As Byte(), deadline As Long)
            Me.Id = id
            Me.Deadline = deadline
        End Sub
    End Class

    Private ReadOnly _connections As New Dictionary(Of String, Connection)  ' by identity, as Latin-1 text

    Private Sub Forget(connection As Connection)
        _connections.Remove(Latin1(connection.Id))
    End Sub

    Private Enum Outcome
        Taken  ' queued for the connection
        Full  ' its queue is at the high-water mark: nothing was sent
        Gone  ' the peer has gone (NetMQ: host unreachable), or the identity was never known
    End Enum

    ''' <summary>
    ''' [identity, bytes], never waiting: a blocking send to a browser that does not read would
    ''' freeze the whole desk. A full queue refuses the identity frame (NetMQ: TrySend is False), and
    ''' then nothing is sent; a connection the socket no longer knows throws host unreachable. Once
    ''' the identity frame is taken, the bytes go with it. Empty bytes close the connection.
    ''' </summary>
    Private Function SendTo(id As Byte(), bytes As Byte()) As Outcome
        Try
            If Not Socket.TrySendFrame(TimeSpan.Zero, id, more:=True) Then Return Outcome.Full
        Catch gone As HostUnreachableException
            Return Outcome.Gone
        End Try
        Socket.TrySendFrame(TimeSpan.Zero, bytes)
        Return Outcome.Taken
    End Function

    ''' <summary>
    ''' Close a connection: [identity, ""]. NetMQ drops what is still queued for it (a response
    ''' closed at once arrives cut) and resets the TCP connection, so a response is never closed
    ''' at once, only at its deadline. A queue without room even for the close: tried again at each
    ''' Expire.
    ''' </summary>
    Private Sub Close(connection As Connection)
        If SendTo(connection.Id, Array.Empty(Of Byte)()) = Outcome.Full Then
            connection.Phase = Phase.Closing
        Else
            Forget(connection)
        End If
    End Sub

    ''' <summary>Send a response; the connection then waits for the client to close (or streams).</summary>
    Private Sub Answer(connection As Connection, response As Byte(), now As Long, Optional stream As Boolean = False)
        connection.Request = Nothing  ' one request per connection: what comes after it is ignored
        Select Case SendTo(connection.Id, response)
            Case Outcome.Taken
                connection.Phase = If(stream, Phase.Streaming, Phase.Answered)
                connection.Deadline = now + CloseMs
            Case Outcome.Full  ' a new connection's queue is empty: never, but closed then
                connection.Phase = Phase.Closing
            Case Outcome.Gone
                Forget(connection)
        End Select
    End Sub

    ' --- 3. requests -----------------------------------------------------------------------------

    ''' <summary>
    ''' Read what came, at most MaxPerTurn messages, each without waiting (a poll's "readable" is a
    ''' hint). libzmq reports a new connection as [identity, ""] and its close the same again; NetMQ
    ''' reports neither, so a connection is known from its first message, empty or not.
    ''' </summary>
    Public Sub Receive(now As Long, onCommand As CommandHandler)
        For count = 1 To MaxPerTurn
            Dim id As Byte() = Nothing, data As Byte() = Nothing, more As Boolean
            If Not Socket.TryReceiveFrameBytes(TimeSpan.Zero, id, more) Then Return
            ' STREAM always gives two frames, the second arriving with the first.
            If Not more OrElse Not Socket.TryReceiveFrameBytes(TimeSpan.Zero, data, more) Then Continue For
            Dim rest As Byte() = Nothing
            Do While more  ' never with STREAM; drained so that the next message starts clean
                Socket.TryReceiveFrameBytes(TimeSpan.Zero, rest, more)
            Loop
            Dim connection As Connection = Nothing
            If _connections.TryGetValue(Latin1(id), connection) Then
                If data.Length = 0 Then  ' libzmq: the peer closed
                    Forget(connection)
                ElseIf connection.Phase = Phase.Reading Then
                    OnData(connection, data, now, onCommand)
                End If  ' after its response: ignored
            ElseIf _connections.Count >= MaxConnections AndAlso Not Reclaim() Then
                SendTo(id, Array.Empty(Of Byte)())  ' one too many: closed at once, unanswered
            Else
                connection = New Connection(id, now + RequestMs)
                _connections(Latin1(id)) = connection
                If data.Length > 0 Then OnData(connection, data, now, onCommand)
            End If
        Next
    End Sub

    ''' <summary>
    ''' Room for one more connection when MaxConnections are known. NetMQ never tells that a client
    ''' closed, so an answered connection stays known until its deadline although its client has
    ''' most likely gone (every response says Connection: close): the one answered longest ago is
    ''' closed now (or forgotten, if it has gone). Only when none is answered is the newcomer refused.
    ''' </summary>
    Private Function Reclaim() As Boolean
        Dim oldest = _connections.Values.Where(Function(c) c.Phase = Phase.Answered).MinBy(Function(c) c.Deadline)
        If oldest IsNot Nothing Then Close(oldest)
        Return _connections.Count < MaxConnections
    End Function

    ''' <summary>A request of the HTTP subset: its line and the two headers we read.</summary>
    Private Structure Head
        Public Method, Target As String
        Public Length As Integer  ' Content-Length; -1 when there is none
    End Structure

    ''' <summary>More of a request: answered once it is whole, or as soon as it breaks a rule.</summary>
    Private Sub OnData(connection As Connection, data As Byte(), now As Long, onCommand As CommandHandler)
        Dim request = connection.Request
        ' Never more than a whole request can take: whatever comes after it is ignored anyway.
        request.Write(data, 0, CInt(Math.Min(data.Length, MaxHead + MaxBody - request.Length)))
        Dim bytes = request.GetBuffer(), length = CInt(request.Length)
        Dim size = HeadSize(bytes, length)
        If size < 0 Then
            If length >= MaxHead Then Answer(connection, Failed(431, $"the request line and headers exceed {MaxHead} bytes"), now)
            Return
        End If
        Dim head As New Head()
        Dim problem = ParseHead(Encoding.Latin1.GetString(bytes, 0, size), head)
        If problem IsNot Nothing Then
            Answer(connection, Failed(problem.Value.Code, problem.Value.Reason), now)
            Return
        End If

        Dim isGet = head.Target = "/" OrElse head.Target = "/events"
        Dim isPost = head.Target = "/follow" OrElse head.Target = "/forget" OrElse head.Target = "/chat" OrElse head.Target = "/value"
        If Not isGet AndAlso Not isPost Then
            Answer(connection, Failed(404, $"no {head.Target} here"), now)
        ElseIf head.Method <> If(isGet, "GET", "POST") Then
            Answer(connection, Failed(405, $"{head.Target} takes {If(isGet, "GET", "POST")}", allow:=If(isGet, "GET", "POST")), now)
        ElseIf head.Target = "/" Then
            Answer(connection, Response(200, "text/html; charset=utf-8", Page), now)
        ElseIf head.Target = "/events" Then
            Answer(connection, Replay(), now, stream:=True)
        ElseIf head.Length < 0 Then
            Answer(connection, Failed(411, "a POST needs a Content-Length"), now)
        ElseIf length - size >= head.Length Then  ' the whole body is in
            Dim body = New ArraySegment(Of Byte)(bytes, size, head.Length).ToArray()
            Dim reply As (Code As Integer, Reason As String) = If(IsUtf8(body), onCommand(head.Target, body), (400, "the body is not UTF-8"))
            Answer(connection, If(reply.Code = 204, Response(204), Failed(reply.Code, reply.Reason)), now)
        End If  ' else the body is still coming
    End Sub

    ''' <summary>Bytes up to and including the first CRLF CRLF within MaxHead, or -1.</summary>
    Private Shared Function HeadSize(bytes As Byte(), length As Integer) As Integer
        For i = 3 To Math.Min(length, MaxHead) - 1
            If bytes(i - 3) = 13 AndAlso bytes(i - 2) = 10 AndAlso bytes(i - 1) = 13 AndAlso bytes(i) = 10 Then Return i + 1
        Next
        Return -1
    End Function

    ''' <summary>The request line and the headers (Latin-1: one character a byte), or the answer to
    ''' a head that breaks the subset's rules.</summary>
    Private Shared Function ParseHead(text As String, ByRef head As Head) As (Code As Integer, Reason As String)?
        Dim lines = text.Substring(0, text.Length - 4).Split({vbCrLf}, StringSplitOptions.None)
        ' METHOD SP TARGET SP VERSION: single spaces, three non-empty parts, printable ASCII.
        Dim parts = lines(0).Split(" "c)
        If parts.Length <> 3 OrElse parts.Any(Function(part) part = "") OrElse lines(0).Any(Function(c) c < " "c OrElse c > "~"c) Then
            Return (400, "the request line is not METHOD SP TARGET SP VERSION in printable ASCII")
        End If
        Dim version = parts(2)
        If version <> "HTTP/1.1" AndAlso version <> "HTTP/1.0" Then
            Dim digit = Function(c As Char) c >= "0"c AndAlso c <= "9"c
            If version.Length = 8 AndAlso version.StartsWith("HTTP/", StringComparison.Ordinal) AndAlso digit(version(5)) AndAlso
               version(6) = "."c AndAlso digit(version(7)) Then Return (505, $"{version} is not spoken here: HTTP/1.1 or HTTP/1.0")
            Return (400, "the version is not HTTP/d.d")
        End If
        head.Method = parts(0)
        head.Target = parts(1)

        Dim length As String = Nothing, chunked = False  ' Content-Length without its leading zeros
        For Each line In lines.Skip(1)
            Dim colon = line.IndexOf(":"c)
            If colon < 0 Then Return (400, "a header line without ':'")
            Dim name = line.Substring(0, colon), value = line.Substring(colon + 1).Trim(" "c, ChrW(9))
            If name.Equals("Transfer-Encoding", StringComparison.OrdinalIgnoreCase) Then
                chunked = True
            ElseIf name.Equals("Content-Length", StringComparison.OrdinalIgnoreCase) Then
                If value = "" OrElse Not value.All(Function(c) c >= "0"c AndAlso c <= "9"c) Then
                    Return (400, "Content-Length is not decimal digits")
                End If
                value = value.TrimStart("0"c)
                If length IsNot Nothing AndAlso length <> value Then Return (400, "two different Content-Length headers")
                length = value
            End If
        Next
        If chunked Then Return (501, "no Transfer-Encoding here: send a Content-Length")
        ' At most 4096, answered before the body comes: digits beyond 4 are too many anyway.
        If length IsNot Nothing AndAlso (length.Length > 4 OrElse CInt("0" & length) > MaxBody) Then
            Return (413, $"a body of at most {MaxBody} bytes")
        End If
        head.Length = If(length Is Nothing, -1, CInt("0" & length))
        Return Nothing
    End Function

    ' --- responses --------------------------------------------------------------------------------

    Private Shared ReadOnly Reasons As New Dictionary(Of Integer, String) From {
        {200, "OK"}, {204, "No Content"}, {400, "Bad Request"}, {404, "Not Found"}, {405, "Method Not Allowed"},
        {408, "Request Timeout"}, {409, "Conflict"}, {411, "Length Required"}, {413, "Content Too Large"},
        {431, "Request Header Fields Too Large"}, {501, "Not Implemented"}, {505, "HTTP Version Not Supported"}}

    ''' <summary>
    ''' Status line, headers, blank line, body. Every response says Connection: close: one request
    ''' per connection, and the client closes first (see Close). The event stream has no length.
    ''' </summary>
    Private Shared Function Response(code As Integer, Optional contentType As String = Nothing, Optional body As Byte() = Nothing,
                                     Optional allow As String = Nothing) As Byte()
        Dim head As New StringBuilder($"HTTP/1.1 {code} {Reasons(code)}{vbCrLf}")
        If contentType IsNot Nothing Then head.Append($"Content-Type: {contentType}{vbCrLf}")
        If code <> 204 AndAlso contentType <> "text/event-stream" Then head.Append($"Content-Length: {If(body?.Length, 0)}{vbCrLf}")
        head.Append($"Cache-Control: no-store{vbCrLf}Connection: close{vbCrLf}")
        If allow IsNot Nothing Then head.Append($"Allow: {allow}{vbCrLf}")
        head.Append(vbCrLf)
        Return Encoding.ASCII.GetBytes(head.ToString()).Concat(If(body, Array.Empty(Of Byte)())).ToArray()
    End Function

    ''' <summary>An error: one line of text saying why.</summary>
    Private Shared Function Failed(code As Integer, reason As String, Optional allow As String = Nothing) As Byte()
        Return Response(code, "text/plain; charset=utf-8", Utf8.GetBytes(reason & vbLf), allow)
    End Function

    ' --- 4. the event streams ----------------------------------------------------------------------

    Private ReadOnly _startUp As New List(Of Byte())  ' every line up to the desk's ready, included
    Private _serving As Boolean  ' the desk's ready is out: later lines go to the ring or the map
    Private ReadOnly _recent As New Queue(Of Byte())  ' the last MaxReplayLines other lines
    Private ReadOnly _latest As New Dictionary(Of String, Byte())  ' key -> its latest line, in first-seen order

    ''' <summary>The desk's ready is out: the start-up lines are complete.</summary>
    Public Sub Serving()
        _serving = True
    End Sub

    Private Shared Function EventBytes(line As Byte()) As Byte()
        Return Encoding.ASCII.GetBytes("data: ").Concat(line).Concat(Encoding.ASCII.GetBytes(vbLf & vbLf)).ToArray()
    End Function

    ''' <summary>A new stream's response: the head, then the replay, in one message.</summary>
    Private Function Replay() As Byte()
        Dim message As New MemoryStream()
        For Each bytes In {Response(200, "text/event-stream")}.Concat(_startUp.Concat(_recent).Concat(_latest.Values).Select(AddressOf EventBytes))
            message.Write(bytes, 0, bytes.Length)
        Next
        Return message.ToArray()
    End Function

    ''' <summary>
    ''' One line the desk wrote (or its progress), kept for the replay and sent to every stream. A
    ''' line with a key (`tick SYMBOL`, `applied KEY`, `progress`) replaces that key's last line
    ''' instead of filling the ring; a key beyond MaxReplayKeys is sent but not kept.
    ''' </summary>
    Public Sub Publish(line As Byte(), Optional key As String = Nothing)
        If Not _serving Then
            _startUp.Add(line)
        ElseIf key Is Nothing Then
            _recent.Enqueue(line)
            If _recent.Count > MaxReplayLines Then _recent.Dequeue()
        ElseIf _latest.Count < MaxReplayKeys OrElse _latest.ContainsKey(key) Then
            _latest(key) = line
        End If
        ' A slow reader: its queue holds 1000 messages (the high-water mark) behind the TCP buffers.
        ' When it refuses one, that event and every later one are dropped for it, and it is closed
        ' once its queue has room for the close (Expire); the page reconnects and gets a fresh
        ' replay. Nobody else waits for it, and no queue grows without bound.
        Dim message = EventBytes(line)
        For Each connection In _connections.Values.Where(Function(c) c.Phase = Phase.Streaming).ToList()
            Select Case SendTo(connection.Id, message)
                Case Outcome.Full
                    connection.Phase = Phase.Closing
                Case Outcome.Gone
                    Forget(connection)
            End Select
        Next
    End Sub

    ' --- 5. deadlines ------------------------------------------------------------------------------

    ''' <summary>A request not whole within RequestMs: 408 if part of it came. A response's
    ''' connection the client has not closed within CloseMs: closed. A stream marked closing: closed
    ''' once its queue takes the close (NetMQ then drops what the queue still holds: the reader
    ''' misses it, and may get its last event cut, which EventSource discards).</summary>
    Public Sub Expire(now As Long)
        For Each connection In _connections.Values.ToList()
            Select Case connection.Phase
                Case Phase.Reading
                    If now < connection.Deadline Then Continue For
                    If connection.Request.Length > 0 Then
                        Answer(connection, Failed(408, $"the request was not whole within {RequestMs} ms"), now)
                    Else
                        Close(connection)  ' libzmq: connected, never said anything
                    End If
                Case Phase.Answered
                    If now >= connection.Deadline Then Close(connection)
                Case Phase.Closing
                    Close(connection)
            End Select
        Next
    End Sub

    ' --- 6. close ----------------------------------------------------------------------------------

    ''' <summary>Close the socket (linger 0), after the agents are joined and before the context
    ''' ends; the desk's last lines (`done`) then go to stdout only.</summary>
    Public Sub Dispose() Implements IDisposable.Dispose
        _connections.Clear()
        _monitor.Dispose()  ' before the socket closes
        Socket.Dispose()
    End Sub
End Class
