' chat: a roster server over REQ/REP with a PUB broadcast channel (examples/chat/PROTOCOL.md).
Imports System.CommandLine
Imports NetMQ
Imports NetMQ.Sockets

Public Module Chat
    Public Const MaxHandle = MaxName  ' bytes of UTF-8
    Public Const MaxText = 4096  ' bytes of UTF-8
    ' [max size] MaxMsgSize on every socket, set before bind or connect: NetMQ drops a bigger frame
    ' together with the connection that sent it, before we ever see it. The largest legal frame is a
    ' MaxText text; twice that lets a text a little too long still reach our own `text-too-long`
    ' rule, and leaves room for CURVE's per-frame overhead. It also bounds the subscriptions a PUB decodes.
    Public Const MaxMessage = 8192  ' bytes

    Public Function Roles() As Command
        Dim server As New Command("server", "keep the roster and relay posts")
        AddEndpoints(server, timeout:=0)
        server.Options.Add(AtLeast("--heartbeat", 1, defaultValue:=100))
        server.Options.Add(AtLeast("--expiry", 1, defaultValue:=5000))
        Security.AddFlags(server, server:=True)
        server.SetAction(AddressOf RunServer)

        Dim client As New Command("client", "join, post --count texts, receive everyone's posts")
        AddEndpoints(client, timeout:=30000)
        client.Options.Add(NameOption("--name"))
        client.Options.Add(AtLeast("--count", 0, defaultValue:=5))
        client.Options.Add(AtLeast("--clients", 1, defaultValue:=1))
        client.Options.Add(AtLeast("--keepalive", 1, defaultValue:=1000))
        client.Options.Add(AtLeast("--retry", 1, defaultValue:=2000))
        client.Options.Add(AtLeast("--pace", 0, defaultValue:=0))
        Security.AddFlags(client, server:=False)
        client.SetAction(AddressOf RunClient)

        Return New Command("chat", "client/server over REQ/REP plus PUB/SUB") From {server, client}
    End Function

    Private Sub AddEndpoints(command As Command, timeout As Integer)
        command.Options.Add(Endpoint("--requests", "tcp://127.0.0.1:5555"))
        command.Options.Add(Endpoint("--broadcasts", "tcp://127.0.0.1:5556"))
        command.Options.Add(AtLeast("--timeout", 0, defaultValue:=timeout))
        command.Options.Add(MonitorOption())
    End Sub

    Public Function PostText(name As String, number As Integer) As String
        Return $"{name} #{number}: héllo wörld 🌍"
    End Function

    ''' <summary>The number i of a text `&lt;handle&gt; #&lt;i&gt;: ...` (1 to 9 ASCII digits), or Nothing.</summary>
    Public Function PostNumber(handle As String, text As String) As Integer?
        Dim prefix = $"{handle} #"
        If Not text.StartsWith(prefix, StringComparison.Ordinal) Then Return Nothing
        Dim colon = text.IndexOf(":"c, prefix.Length)
        Dim digits = If(colon < 0, "", text.Substring(prefix.Length, colon - prefix.Length))
        If digits.Length < 1 OrElse digits.Length > 9 OrElse Not digits.All(Function(c) c >= "0"c AndAlso c <= "9"c) Then Return Nothing
        Return Integer.Parse(digits)
    End Function

    ' --- server ---------------------------------------------------------------------------------

    ''' <summary>Orders handles by their bytes, as the protocol sorts the roster: unsigned, lexicographic,
    ''' a shorter prefix first. Comparing .NET strings would compare UTF-16 code units, which sort
    ''' otherwise above U+FFFF: the roster is keyed by the handle's bytes, as it came.</summary>
    Private NotInheritable Class ByteOrder
        Implements IComparer(Of Byte())

        Public Shared ReadOnly Instance As New ByteOrder()

        Public Function Compare(x As Byte(), y As Byte()) As Integer Implements IComparer(Of Byte()).Compare
            For i = 0 To Math.Min(x.Length, y.Length) - 1
                If x(i) <> y(i) Then Return x(i).CompareTo(y(i))
            Next
            Return x.Length.CompareTo(y.Length)
        End Function
    End Class

    ''' <summary>The first broken rule of a request, as (code, reason), or Nothing when it is well formed.</summary>
    Public Function CheckRequest(frames As List(Of Byte())) As (Code As String, Reason As String)?
        ' [multipart] A request arrives whole or not at all, but its frame count is the peer's to
        ' choose: checked first, never assumed.
        If frames.Count <> 1 AndAlso frames.Count <> 2 Then
            Return ("frame-count", $"expected 1 or 2 frames, got {frames.Count}")
        End If
        If frames(0).Length = 0 Then Return ("empty-handle", "the handle frame is empty")
        If frames(0).Length > MaxHandle Then
            Return ("handle-too-long", $"the handle has {frames(0).Length} bytes, at most {MaxHandle}")
        End If
        If frames.Count = 2 AndAlso frames(1).Length = 0 Then Return ("empty-text", "the text frame is empty")
        If frames.Count = 2 AndAlso frames(1).Length > MaxText Then
            Return ("text-too-long", $"the text has {frames(1).Length} bytes, at most {MaxText}")
        End If
        For Each frame In frames
            Try
                Utf8.GetString(frame)
            Catch problem As Text.DecoderFallbackException
                Return ("invalid-utf8", $"not UTF-8: invalid byte at {problem.Index}")
            End Try
        Next
        Return Nothing
    End Function

    ''' <summary>A well-formed post from a handle the server does not know: join first. After a restart,
    ''' this is how a posting client learns that the server has forgotten it.</summary>
    Public Function CheckPost(frames As List(Of Byte()), roster As SortedDictionary(Of Byte(), Long)) As (Code As String, Reason As String)?
        If frames.Count = 2 AndAlso Not roster.ContainsKey(frames(0)) Then
            Return ("unknown-handle", "join with [handle] before posting")
        End If
        Return Nothing
    End Function

    Private Function RunServer(args As ParseResult) As Integer
        Dim timeout = args.GetValue(Of Integer)("--timeout")
        Dim heartbeat = args.GetValue(Of Integer)("--heartbeat")
        Dim expiry = args.GetValue(Of Integer)("--expiry")
        Dim credentials = Security.Read(args, server:=True)
        ' [REP] REP answers each request exactly once, in order: it keeps the requester's envelope and
        ' routes the reply back by it, so a second receive before the reply is not even possible.
        ' [PUB] PUB fans every broadcast out to every subscriber whose filter matches; it never blocks,
        ' and drops for a subscriber not connected yet (the slow joiner) or past its high-water mark.
        Using stopSignal As New StopSignal(),
              requests As New ResponseSocket(),
              broadcasts As New PublisherSocket(),
              monitor As New SocketMonitor(MonitorOn(args))  ' disposed first: before the sockets close
            Dim deadline As New Deadline(timeout)
            ' [linger] 0 on both: the server stops only when told to, and closing then drops what is
            ' still queued (a reply or a broadcast for a client that is gone) instead of waiting for it.
            requests.Options.Linger = TimeSpan.Zero
            broadcasts.Options.Linger = TimeSpan.Zero
            requests.Options.MaxMsgSize = MaxMessage
            broadcasts.Options.MaxMsgSize = MaxMessage  ' send-only, but it still decodes subscriptions
            ' [HWM] The PUB's send high-water mark stays at NetMQ's default, 1000 messages per subscriber:
            ' a client that does not read loses broadcasts past it, and the server never waits for it.
            credentials.SecureServer(requests)
            credentials.SecureServer(broadcasts)
            monitor.Attach(requests, "requests")
            monitor.Attach(broadcasts, "broadcasts")
            Try
                requests.Bind(args.GetValue(Of String)("--requests"))
                broadcasts.Bind(args.GetValue(Of String)("--broadcasts"))
            Catch problem As NetMQException  ' the address is in use, the transport is unknown...
                Throw New Failure("bind", $"cannot bind: {problem.ErrorCode}")
            Catch problem As Exception When TypeOf problem Is ArgumentException OrElse TypeOf problem Is FormatException  ' an endpoint NetMQ cannot even parse
                Throw New Failure("bind", $"cannot bind: {problem.Message}")
            End Try
            Emit("ready", ("requests", requests.Options.LastEndpoint), ("broadcasts", broadcasts.Options.LastEndpoint),
                 ("security", credentials.Mechanism))

            ' handle (its UTF-8 bytes, as they came) -> last seen on the monotonic millisecond clock,
            ' kept sorted by those bytes
            Dim roster As New SortedDictionary(Of Byte(), Long)(ByteOrder.Instance)
            Dim accepted = 0, rejected = 0
            Dim nextBeat = Environment.TickCount64

            Dim broadcastRoster =
                Sub()
                    ' Frame 0 is empty: no handle is, so subscribers know the server itself is speaking.
                    broadcasts.SendMultipartBytes({Array.Empty(Of Byte)()}.Concat(roster.Keys))
                End Sub

            Do Until stopSignal.Raised
                If deadline.Expired() Then Throw New Failure("timeout", $"still serving after {timeout} ms")
                Dim waitMs = Math.Max(0, nextBeat - Environment.TickCount64)
                ' [poll] One poll for the socket the server reads (NetMQ has no ZAP, and its monitors run
                ' on threads of their own), up to the next heartbeat: the heartbeat, the deadline and
                ' the stop flag all get their turn. Then a receive that does not wait: POLLIN is a hint,
                ' and REP drops inside the receive a request it cannot answer. .NET takes signals on a
                ' thread of its own, so no poll is ever interrupted (no EINTR).
                Dim frames = If(PollIn(requests, deadline.Cap(waitMs)), ReceiveIfReady(requests), Nothing)
                If frames IsNot Nothing Then
                    Dim problem = If(CheckRequest(frames), CheckPost(frames, roster))
                    If problem IsNot Nothing Then
                        Dim code = problem.Value.Code
                        rejected += 1
                        requests.SendMultipartBytes(Array.Empty(Of Byte)(), Utf8.GetBytes(code))
                        Emit("error", ("code", code), ("reason", problem.Value.Reason))
                    Else
                        Dim handle = frames(0)
                        Dim joined = Not roster.ContainsKey(handle)
                        roster(handle) = Environment.TickCount64
                        If frames.Count = 2 Then
                            broadcasts.SendMultipartBytes(frames)  ' [handle, text], exactly as posted
                            Emit("posted", ("handle", Utf8.GetString(handle)), ("text", Utf8.GetString(frames(1))))
                        End If
                        accepted += 1
                        requests.SendMultipartBytes(roster.Keys)
                        If joined Then
                            Emit("joined", ("handle", Utf8.GetString(handle)))
                            broadcastRoster()
                        End If
                    End If
                End If
                Dim now = Environment.TickCount64
                If now >= nextBeat Then
                    For Each silent In roster.Where(Function(entry) now - entry.Value > expiry).Select(Function(entry) entry.Key).ToList()
                        roster.Remove(silent)
                        Emit("expired", ("handle", Utf8.GetString(silent)))
                    Next
                    broadcastRoster()
                    nextBeat = now + heartbeat
                End If
            Loop

            Emit("done", ("requests", accepted), ("rejected", rejected))
        End Using
        Return 0
    End Function

    ' --- client ---------------------------------------------------------------------------------

    ''' <summary>
    ''' The roster of a reply, in `roster`, or why the reply ends the client: the server rejected our
    ''' request (`rejected`) or broke the reply table (`malformed-reply`). The desk's chat agent uses it too.
    ''' </summary>
    Public Function CheckReply(reply As List(Of Byte()), ByRef roster As List(Of String)) As (Code As String, Reason As String)?
        If reply(0).Length = 0 Then
            If reply.Count <> 2 Then Return ("malformed-reply", $"an error reply has 2 frames, got {reply.Count}")
            Return ("rejected", $"the server rejected our request: {Shown(reply(1), 32)}")
        End If
        roster = RosterOf(reply)
        If roster Is Nothing Then Return ("malformed-reply", $"a roster frame is not a handle (1 to {MaxHandle} bytes of UTF-8)")
        Return Nothing
    End Function

    ''' <summary>The frames as a roster, or Nothing if one of them is not a handle. Their order is not
    ''' checked (the orchestrator does that), nor are repeats.</summary>
    Private Function RosterOf(frames As IEnumerable(Of Byte())) As List(Of String)
        Return If(frames.All(AddressOf IsName), frames.Select(AddressOf Utf8.GetString).ToList(), Nothing)
    End Function

    ''' <summary>A broadcast: a roster (frame 0 empty, then the handles), or a post [handle, text].</summary>
    Public Structure Broadcast
        Public Roster As List(Of String)  ' Nothing for a post
        Public Handle As String
        Public Text As String
    End Structure

    ''' <summary>Why a broadcast is malformed, or Nothing when it is good: then `broadcast` holds it.</summary>
    Public Function CheckBroadcast(frames As List(Of Byte()), ByRef broadcast As Broadcast) As String
        If frames(0).Length = 0 Then  ' from the server itself: the roster
            Dim roster = RosterOf(frames.Skip(1))
            If roster Is Nothing Then Return $"a roster frame is not a handle (1 to {MaxHandle} bytes of UTF-8)"
            broadcast = New Broadcast With {.Roster = roster}
            Return Nothing
        End If
        If frames.Count <> 2 Then Return $"a post has 2 frames, got {frames.Count}"
        If Not IsName(frames(0)) Then Return $"a post's handle is not 1 to {MaxHandle} bytes of UTF-8"
        Dim text = frames(1)
        If text.Length < 1 OrElse text.Length > MaxText OrElse Not IsUtf8(text) Then
            Return $"a post's text of {text.Length} bytes is not 1 to {MaxText} bytes of UTF-8"
        End If
        broadcast = New Broadcast With {.Handle = Utf8.GetString(frames(0)), .Text = Utf8.GetString(text)}
        Return Nothing
    End Function

    Private NotInheritable Class Client
        Implements IDisposable

        Private ReadOnly _name As String
        Private ReadOnly _handle As Byte()
        Private ReadOnly _count, _clients, _keepalive, _retry, _pace, _timeout As Integer
        Private ReadOnly _requests, _broadcasts As String
        Private ReadOnly _monitorOn As Boolean
        Private ReadOnly _deadline As Deadline
        Private ReadOnly _credentials As Security
        Private _sub As SubscriberSocket  ' replaced when we rejoin, with its monitor
        Private _subMonitor As SocketMonitor
        Private _req As RequestSocket  ' replaced by Lazy Pirate, with its monitor
        Private _reqMonitor As SocketMonitor
        Private _roster As New List(Of String)
        Private _peers As New List(Of String)  ' the roster of step 4: whose posts we wait for, who must rejoin first
        Private ReadOnly _last As New Dictionary(Of String, Integer)  ' handle -> the highest post number received from it
        Private ReadOnly _texts As New Dictionary(Of String, HashSet(Of String))  ' handle -> the different texts received from it
        Private _received As Integer
        Private _listed As Boolean  ' a roster broadcast listed us since our last join
        Private _forgotten As Boolean  ' the server forgot us (it restarted): rejoin before anything else
        Private _lastRequest As Long = Environment.TickCount64

        Private Shared ReadOnly UnknownHandle As Byte() = Utf8.GetBytes("unknown-handle")

        Public Sub New(args As ParseResult)
            _name = args.GetValue(Of String)("--name")
            _handle = Utf8.GetBytes(_name)
            _count = args.GetValue(Of Integer)("--count")
            _clients = args.GetValue(Of Integer)("--clients")
            _keepalive = args.GetValue(Of Integer)("--keepalive")
            _retry = args.GetValue(Of Integer)("--retry")
            _pace = args.GetValue(Of Integer)("--pace")
            _timeout = args.GetValue(Of Integer)("--timeout")
            _requests = args.GetValue(Of String)("--requests")
            _broadcasts = args.GetValue(Of String)("--broadcasts")
            _monitorOn = MonitorOn(args)
            _deadline = New Deadline(_timeout)
            _credentials = Security.Read(args, server:=False)
            ' SUB created and connected first, then REQ: its subscription starts travelling as early as possible.
            OpenBroadcasts()
            OpenRequests()
        End Sub

        Private Shared Sub Connect(socket As NetMQSocket, endpoint As String)
            Try
                socket.Connect(endpoint)
            Catch problem As Exception  ' NetMQ throws several exception types for a bad endpoint
                Throw New Failure("connect", $"cannot connect: {problem.Message}")
            End Try
        End Sub

        ''' <summary>A new SUB socket, subscribed to everything and connected, with its own monitor: at
        ''' startup, and again when we rejoin (its first broadcast then comes from the server that
        ''' forgot us). NetMQ has no handshake events, so there is no handshake watcher to attach instead.</summary>
        Private Sub OpenBroadcasts()
            ' [SUB] SUB delivers only what matches one of its subscriptions, a prefix of frame 0; ""
            ' lets posts and rosters through. Subscribed before it connects, so the subscription goes
            ' out with the connection; it still takes time to reach the server (the slow joiner, Run).
            _sub = New SubscriberSocket()
            _sub.Options.Linger = TimeSpan.Zero
            _sub.Options.MaxMsgSize = MaxMessage
            _sub.Subscribe("")
            _credentials.SecureClient(_sub)
            _subMonitor = New SocketMonitor(_monitorOn)
            _subMonitor.Attach(_sub, "broadcasts")
            Connect(_sub, _broadcasts)
        End Sub

        Private Sub CloseBroadcasts()
            _subMonitor.Dispose()  ' before the socket closes
            _sub.Dispose()
        End Sub

        ''' <summary>A new REQ socket, connected, with its own monitor.</summary>
        Private Sub OpenRequests()
            ' [REQ] REQ is strict lockstep: send, receive, send, receive..., one request in flight and
            ' no second send before the reply. So when a reply is lost, Lazy Pirate throws the socket
            ' away and comes here for a new one.
            _req = New RequestSocket()
            ' [linger] 0 on both client sockets: closing the REQ drops a request still queued for a
            ' dead server (Lazy Pirate), and the client leaves only once every request is answered.
            _req.Options.Linger = TimeSpan.Zero
            _req.Options.MaxMsgSize = MaxMessage
            _credentials.SecureClient(_req)
            _reqMonitor = New SocketMonitor(_monitorOn)
            _reqMonitor.Attach(_req, "requests")
            Connect(_req, _requests)
        End Sub

        Private Sub CloseRequests()
            _reqMonitor.Dispose()  ' before the socket closes
            _req.Dispose()
        End Sub

        ''' <summary>One round trip, Lazy Pirate style; returns the roster of the reply, or Nothing when
        ''' the server answered a post with `unknown-handle` (rejoin, then send it again).</summary>
        Private Function Request(ParamArray frames As Byte()()) As List(Of String)
            _req.SendMultipartBytes(frames)
            Dim reply = WaitForReply()
            Do While reply Is Nothing
                ' The reply is lost, perhaps with the server. Close the REQ (linger 0 drops what it
                ' still holds) and send the same request again on a new one.
                Emit("retried", ("text", If(frames.Length = 2, Utf8.GetString(frames(1)), "")))
                CloseRequests()
                OpenRequests()
                _req.SendMultipartBytes(frames)
                reply = WaitForReply()
            Loop
            _lastRequest = Environment.TickCount64
            If frames.Length = 2 AndAlso reply.Count = 2 AndAlso reply(0).Length = 0 AndAlso reply(1).SequenceEqual(UnknownHandle) Then
                _forgotten = True
                Return Nothing
            End If
            Dim roster As List(Of String) = Nothing
            Dim problem = CheckReply(reply, roster)
            If problem IsNot Nothing Then Throw New Failure(problem.Value.Code, problem.Value.Reason)
            UpdateRoster(roster)
            Return roster
        End Function

        ''' <summary>The reply, or Nothing once --retry ms passed without one; `no-reply` at the deadline.</summary>
        Private Function WaitForReply() As List(Of Byte())
            Dim giveUp = Environment.TickCount64 + _retry
            Do
                Dim waitMs = giveUp - Environment.TickCount64
                If waitMs <= 0 Then Return Nothing
                If _deadline.Expired() Then Throw New Failure("no-reply", $"no reply from the server within {_timeout} ms")
                ' REQ may drop a reply it cannot route inside the receive: back to the poll then.
                Dim reply = If(PollIn(_req, _deadline.Cap(waitMs)), ReceiveIfReady(_req), Nothing)
                If reply IsNot Nothing Then Return reply
            Loop
        End Function

        Private Function Join() As List(Of String)
            _listed = False
            Return Request(_handle)
        End Function

        Private Sub UpdateRoster(roster As List(Of String))
            If Not roster.SequenceEqual(_roster) Then
                _roster = roster
                Emit("roster", ("handles", roster))
            End If
        End Sub

        Private Sub OnBroadcast(frames As List(Of Byte()))
            Dim broadcast As New Broadcast()
            Dim problem = CheckBroadcast(frames, broadcast)
            If problem IsNot Nothing Then
                Emit("error", ("code", "malformed-broadcast"), ("reason", problem))
            ElseIf broadcast.Roster IsNot Nothing Then
                UpdateRoster(broadcast.Roster)
                If broadcast.Roster.Contains(_name) Then
                    _listed = True
                ElseIf _listed Then  ' after one with us, a roster without us: the server has forgotten us
                    _forgotten = True
                    _listed = False
                End If
            Else
                OnPost(broadcast.Handle, broadcast.Text)
            End If
        End Sub

        Private Sub OnPost(handle As String, text As String)
            _received += 1
            Dim texts As HashSet(Of String) = Nothing
            If Not _texts.TryGetValue(handle, texts) Then
                texts = New HashSet(Of String)(StringComparer.Ordinal)
                _texts(handle) = texts
            End If
            texts.Add(text)  ' a duplicate adds nothing
            Emit("received", ("handle", handle), ("text", text))
            Dim number = PostNumber(handle, text)
            If number Is Nothing Then Return
            Dim last = _last.GetValueOrDefault(handle)
            For missing = last + 1 To Math.Min(number.Value - 1, _count)  ' bounded by --count
                Emit("missed", ("handle", handle), ("number", missing))  ' lost with a server that died
            Next
            _last(handle) = Math.Max(last, number.Value)
        End Sub

        ''' <summary>--count different texts from `peer`, or its post numbered --count (posts before it
        ''' may have been lost with a server that died). A person's post, through the desk's page, is
        ''' any text: it has no number, but it counts as one text.</summary>
        Private Function HeardAll(peer As String) As Boolean
            Dim texts As HashSet(Of String) = Nothing
            Dim different = If(_texts.TryGetValue(peer, texts), texts.Count, 0)
            Return different >= _count OrElse _last.GetValueOrDefault(peer) >= _count
        End Function

        ''' <summary>Handle one broadcast, or send a keep-alive when one is due, whichever comes first;
        ''' or rejoin, if the server has forgotten us. Returns by `paceEnd` (monotonic ms) if given.</summary>
        Private Sub Serve(Optional paceEnd As Long? = Nothing)
            If _forgotten Then
                Rejoin()
                Return
            End If
            If _deadline.Expired() Then Throw New Failure("timeout", $"not done after {_timeout} ms")
            Dim due = _lastRequest + _keepalive
            Dim waitMs = Math.Max(0, Math.Min(due, If(paceEnd, due)) - Environment.TickCount64)
            ' [poll] Poll the SUB up to the next keep-alive (or the end of --pace), never past the
            ' deadline, then receive without waiting; nothing is an answer too: the timer's turn.
            Dim frames = If(PollIn(_sub, _deadline.Cap(waitMs)), ReceiveIfReady(_sub), Nothing)
            If frames IsNot Nothing Then OnBroadcast(frames)
            ' The timer, even after a broadcast (a stream of them must not starve it), unless that
            ' broadcast told us the server forgot us: then the next turn rejoins, and a keep-alive now
            ' would join us without the slow joiner's wait.
            If Not _forgotten AndAlso Environment.TickCount64 >= due Then
                Request(_handle)  ' keep-alive: silent handles expire from the roster
            End If
        End Sub

        ''' <summary>The server forgot us: join again as a newcomer (PROTOCOL.md, "Restarts").</summary>
        Private Sub Rejoin()
            ' What the old SUB already holds came from the old server: take it, then throw the socket
            ' away. Which of its broadcasts are older than our join, nothing tells; a new SUB holds none.
            ' It drains on purpose (PROTOCOL.md, "Restarts"): at most what the SUB's queue holds.
            Dim frames = ReceiveIfReady(_sub)
            Do While frames IsNot Nothing
                OnBroadcast(frames)
                frames = ReceiveIfReady(_sub)
            Loop
            CloseBroadcasts()
            OpenBroadcasts()
            ' Slow joiner, again: the new SUB's first broadcast comes from the server that forgot us,
            ' once our subscription has reached it. Until then, no request, not even a keep-alive.
            OnBroadcast(WaitForFirstBroadcast())
            _forgotten = False
            Emit("rejoined", ("handles", Join()))
            ' Everyone listens before anyone talks, again: every peer rejoins the same way.
            Do Until _peers.All(Function(peer) _roster.Contains(peer))
                Serve()
            Loop
        End Sub

        ''' <summary>The first broadcast's frames on the current SUB; `timeout` at the deadline.
        ''' A refused handshake looks the same as silence: NetMQ's monitor has no handshake events, so a
        ''' client with the wrong keys hears nothing and ends with `timeout` (libzmq's clients say `refused`).</summary>
        Private Function WaitForFirstBroadcast() As List(Of Byte())
            Do
                Dim frames = If(PollIn(_sub, _deadline.Cap(_keepalive)), ReceiveIfReady(_sub), Nothing)
                If frames IsNot Nothing Then Return frames
                If _deadline.Expired() Then Throw New Failure("timeout", "no broadcast from the server")
            Loop
        End Function

        Public Sub Run()
            ' [slow joiner] Until a first broadcast arrives, our subscription may not have reached the
            ' server, and PUB drops posts for us. The server broadcasts a roster at least every
            ' heartbeat, so the first one of any kind says the subscription is live.
            OnBroadcast(WaitForFirstBroadcast())
            Join()
            Emit("ready", ("handle", _name), ("security", _credentials.Mechanism))

            ' Everyone listens before anyone talks: wait for --clients handles, all subscribed.
            Do While _roster.Count < _clients
                Serve()
            Loop
            _peers = _roster.ToList()
            Log($"{_name}: {_peers.Count} peers, posting {_count} texts")

            Dim number = 1
            Do While number <= _count
                Dim text = PostText(_name, number)
                Dim roster = Request(_handle, Utf8.GetBytes(text))
                If roster Is Nothing Then  ' unknown-handle: rejoin, then the same post again
                    Rejoin()
                    Continue Do
                End If
                Emit("sent", ("text", text), ("roster", roster))
                number += 1
                Dim paceEnd = Environment.TickCount64 + _pace  ' --pace: broadcasts are served meanwhile
                Do While Environment.TickCount64 < paceEnd
                    Serve(paceEnd)
                Loop
            Loop

            Do Until _peers.All(AddressOf HeardAll)
                Serve()
            Loop
            Emit("done", ("sent", _count), ("received", _received))
        End Sub

        Public Sub Dispose() Implements IDisposable.Dispose
            CloseBroadcasts()
            CloseRequests()
        End Sub
    End Class

    Private Function RunClient(args As ParseResult) As Integer
        Using client As New Client(args)
            client.Run()
        End Using
        Return 0
    End Function
End Module
