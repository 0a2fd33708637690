' desk: a trading desk, one process whose threads talk over inproc pipes (examples/desk/PROTOCOL.md).
' Four agent threads each own the sockets of one earlier example and speak its protocol, as that
' example's client role turned into a loop that polls its sockets and its pipe; the main thread runs
' the scenario and is the only one that writes stdout (but for the socket monitors' threads, with
' --monitor on). The threads share nothing but NetMQ's one context: they talk through PAIR sockets
' over inproc://, the pipes.
Imports System.Buffers.Binary
Imports System.CommandLine
Imports System.CommandLine.Parsing
Imports System.Globalization
Imports System.Text
Imports System.Text.RegularExpressions
Imports System.Threading
Imports NetMQ
Imports NetMQ.Sockets

Public Module Desk
    Private ReadOnly AgentNames As String() = {"chat", "ticker", "valuation", "query"}  ' the start-up order
    Private Const KeepaliveMs = 1000  ' the chat client's default --keepalive
    Private Const MaxWaiting = 100  ' texts (or writes) an agent holds until its protocol lets them go
    Private Const OrdersPerTurn = 1000  ' sends in one burst, so that results and the pipe get their turn
    Private Const StopWaitMs = 5000  ' for every agent's `stopped`, after STOP
    Private Const SignalCheckMs = 100  ' a signal only raises a flag: the main thread looks this often
    Private Const ProgressMs = 100  ' the page's progress of a trade, at most this often

    ' --- flags ----------------------------------------------------------------------------------

    Public Function Roles() As Command
        Dim trader As New Command("trader", "a trader's desk: one agent thread per service, inproc PAIR pipes") From {
            SegmentOption("--name"),
            Endpoint("--chat-requests", "tcp://127.0.0.1:5555"),
            Endpoint("--chat-broadcasts", "tcp://127.0.0.1:5556"),
            AtLeast("--chat-clients", 1, defaultValue:=1),
            AtLeast("--posts", 0, defaultValue:=5),
            Endpoint("--ticks", "tcp://127.0.0.1:5557"),
            SymbolsOption("--follow", "AAPL,GOOG,MSFT"),
            ForgetOption("--forget"),
            AtLeast("--forget-after", 1, defaultValue:=10),
            AtLeast("--tick-count", 1, defaultValue:=20),
            UInt64Option("--seed", 1),
            Endpoint("--orders", "tcp://127.0.0.1:5562"),
            Endpoint("--results", "tcp://127.0.0.1:5560"),
            Endpoint("--control", "tcp://127.0.0.1:5561"),
            AtLeast("--trade", 0, defaultValue:=100, maximum:=1000000),
            AtLeast("--workers", 1, defaultValue:=1),
            AtLeast("--quiet", 1, defaultValue:=1000),
            AtLeast("--heartbeat", 1, defaultValue:=100),
            Endpoint("--snapshot", "tcp://127.0.0.1:5566"),
            Endpoint("--updates", "tcp://127.0.0.1:5567"),
            Endpoint("--collector", "tcp://127.0.0.1:5568"),
            SubtreesOption("--subtrees", "/prices/,/desks/"),
            HttpOption("--http"),
            AtLeast("--timeout", 0, defaultValue:=60000),
            MonitorOption()}
        trader.SetAction(AddressOf RunTrader)
        Return New Command("desk", "multi-threading over inproc pipes, using examples 1-4") From {trader}
    End Function

    ''' <summary>One symbol of --follow, forgotten during the run; empty (the default): none.</summary>
    Private Function ForgetOption(name As String) As [Option](Of String)
        Return New [Option](Of String)(name) With {
            .DefaultValueFactory = Function(result) "",
            .CustomParser =
                Function(result)
                    Dim text = result.Tokens.Single().Value
                    Return If(text = "", text, CheckSymbol(text, result))
                End Function}
    End Function

    ''' <summary>The page's endpoint: tcp://HOST:PORT, the port a number or * (any free one); empty
    ''' (the default): no page.</summary>
    Private Function HttpOption(name As String) As [Option](Of String)
        Return New [Option](Of String)(name) With {
            .DefaultValueFactory = Function(result) "",
            .CustomParser =
                Function(result)
                    Dim text = result.Tokens.Single().Value
                    Dim found = Regex.Match(text, "\Atcp://[^\s/]+:(\*|[0-9]{1,5})\z")
                    If text <> "" AndAlso Not (found.Success AndAlso (found.Groups(1).Value = "*" OrElse CInt(found.Groups(1).Value) <= 65535)) Then
                        result.AddError($"{name} takes a tcp://HOST:PORT endpoint (PORT a number or *), not '{text}'")
                    End If
                    Return text
                End Function}
    End Function

    ' --- the pipes ------------------------------------------------------------------------------

    Private Function PipeEndpoint(agent As String) As String
        Return $"inproc://desk-{agent}"
    End Function

    ''' <summary>An agent's end of its pipe. Events go up, commands come down.</summary>
    Private NotInheritable Class Pipe
        Implements IDisposable

        Public ReadOnly Agent As String
        ' [PAIR] A PAIR joins exactly two known ends, here the main thread and this agent's: it never
        ' drops and never routes, and a second connection is refused.
        Public ReadOnly Socket As New PairSocket()

        Public Sub New(agent As String)
            Me.Agent = agent
            ' [linger] 0: an inproc send hands the message to the peer's queue itself, so nothing is
            ' left to flush at close. No MaxMsgSize: inproc has no bytes to decode, only whole messages
            ' between threads of one program.
            ' [HWM] The high-water mark stays at 1000 messages: at it PAIR blocks the sender instead of
            ' dropping; the main thread reads every pipe whenever it is readable, so none fills up.
            Socket.Options.Linger = TimeSpan.Zero
            ' [inproc] The main thread bound this endpoint, in the process's one context, before it
            ' started our thread (bind before connect: the inproc order that works in every library).
            Socket.Connect(PipeEndpoint(agent))
        End Sub

        ''' <summary>An event: frame 0 its name, frame 1 the JSON object with "agent", then the values
        ''' the main thread acts on (it never parses the JSON).</summary>
        Public Sub SendEvent(name As String, fields As (Key As String, Value As Object)(), ParamArray extras As Byte()())
            Dim json = EventJson(name, fields.Prepend(("agent", CObj(Agent))))
            Socket.SendMultipartBytes({Encoding.ASCII.GetBytes(name), json}.Concat(extras))
        End Sub

        ''' <summary>An event of frames 0 and 1 only; an Emitter, for the code shared with the example's role.</summary>
        Public Sub Report(name As String, ParamArray fields As (Key As String, Value As Object)())
            SendEvent(name, fields)
        End Sub

        ''' <summary>The next command, received without waiting after a poll: Nothing if none after all.</summary>
        Public Function NextCommand() As List(Of Byte())
            Return ReceiveIfReady(Socket)
        End Function

        Public Sub BadCommand(command As List(Of Byte()), why As String)
            Report("error", ("code", "bad-command"), ("reason", $"{Shown(command(0), 16)} in {command.Count} frame{If(command.Count = 1, "", "s")}: {why}"))
        End Sub

        Public Sub Dispose() Implements IDisposable.Dispose
            Socket.Dispose()
        End Sub
    End Class

    ''' <summary>Whether a command is `name` in exactly `frameCount` frames.</summary>
    Private Function IsCommand(command As List(Of Byte()), name As String, frameCount As Integer) As Boolean
        ' [multipart] A command arrives whole or not at all, even over inproc; its frame count is
        ' checked, never assumed: commands will come from people (the page).
        Return command.Count = frameCount AndAlso Word(command(0), name)
    End Function

    Private Function IsSymbol(frame As Byte()) As Boolean
        Return frame.Length >= 1 AndAlso frame.Length <= 8 AndAlso frame.All(Function(b) b >= AscW("A"c) AndAlso b <= AscW("Z"c))
    End Function

    ' --- chat agent: a chat client (Chat.vb) ----------------------------------------------------

    Private Sub ChatAgent(name As String, requestsEndpoint As String, broadcastsEndpoint As String, clients As Integer,
                          monitorOn As Boolean)
        Using pipe As New Pipe("chat")
            Dim sent = 0, received = 0
            ' [SUB] SUB: posts and rosters alike, as the chat client's, subscribed to "" before it connects.
            ' [REQ] REQ is strict lockstep: one request in flight, no second send before its reply.
            Using broadcasts As New SubscriberSocket(),
                  requests As New RequestSocket(),
                  monitor As New SocketMonitor(monitorOn)  ' disposed first: before the sockets close
                ' [max size] The chat client's MaxMsgSize, set before connect: a bigger frame is dropped
                ' by NetMQ together with its connection.
                For Each socket In New NetMQSocket() {broadcasts, requests}
                    socket.Options.Linger = TimeSpan.Zero
                    socket.Options.MaxMsgSize = Chat.MaxMessage
                Next
                broadcasts.Subscribe("")
                ' The monitors' lines go straight to stdout, from their own threads, not up the pipe.
                monitor.Attach(broadcasts, "chat-broadcasts")
                monitor.Attach(requests, "chat-requests")
                Dim running = True
                Try  ' SUB first, so that its subscription starts travelling as early as possible
                    broadcasts.Connect(broadcastsEndpoint)
                    requests.Connect(requestsEndpoint)
                Catch problem As Exception When IsEndpointProblem(problem)
                    pipe.Report("error", ("code", "connect"), ("reason", $"cannot connect: {problem.Message}"))
                    running = False
                End Try
                If running Then pipe.Report("ready", ("handle", name))

                Dim handle = Utf8.GetBytes(name)
                ' [slow joiner] No request before a first broadcast: until one arrives our subscription
                ' may not have reached the server, which would drop posts for us.
                Dim heard = False  ' a first broadcast: our subscription is live
                Dim joined = False  ' the reply to our join has come
                Dim everyone = False  ' a roster of --chat-clients handles was seen: everyone listens
                Dim inFlight = False  ' REQ is strict lockstep: one request, then its reply
                Dim posting As String = Nothing  ' the text of the post in flight
                Dim lastRequest = Environment.TickCount64
                Dim roster As New List(Of String)
                Dim waiting As New Queue(Of String)
                Dim onRoster =
                    Sub(members As List(Of String))
                        If Not members.SequenceEqual(roster) Then
                            roster = members
                            pipe.Report("roster", ("handles", members))
                        End If
                        If members.Count >= clients Then everyone = True
                    End Sub
                Dim request =
                    Sub(message As Byte()())
                        requests.SendMultipartBytes(message)  ' one request at most is queued: no high-water mark to meet
                        inFlight = True
                    End Sub

                Dim polled = New NetMQSocket() {pipe.Socket, broadcasts, requests}
                Do While running
                    ' [poll] One poll for the pipe and both sockets, until the next keep-alive is due (a
                    ' second when none can be sent anyway): a STOP is seen however long the server takes.
                    ' Then one message from each ready socket, pipe, SUB, REQ, without waiting: "ready"
                    ' is a hint, and REQ drops inside the receive a reply it cannot match. .NET takes
                    ' signals on a thread of its own: no poll is interrupted (EINTR).
                    Dim waitMs = If(joined AndAlso Not inFlight, Math.Max(0, lastRequest + KeepaliveMs - Environment.TickCount64), KeepaliveMs)
                    Dim ready = PollIn(polled, TimeSpan.FromMilliseconds(waitMs))
                    Dim command = If(ready.Contains(pipe.Socket), pipe.NextCommand(), Nothing)
                    If command Is Nothing Then
                    ElseIf IsCommand(command, "STOP", 1) Then
                        Exit Do
                    ElseIf Not IsCommand(command, "POST", 2) Then
                        pipe.BadCommand(command, "the chat agent takes POST text and STOP")
                    Else
                        ' A text is good when the chat server would accept it: 1 to 4096 bytes of UTF-8.
                        Dim problem = CheckRequest(New List(Of Byte()) From {handle, command(1)})
                        If problem IsNot Nothing Then
                            pipe.BadCommand(command, problem.Value.Reason)
                        ElseIf waiting.Count >= MaxWaiting Then
                            pipe.BadCommand(command, "busy")
                        Else
                            waiting.Enqueue(Utf8.GetString(command(1)))
                        End If
                    End If

                    Dim frames = If(ready.Contains(broadcasts), ReceiveIfReady(broadcasts), Nothing)
                    If frames IsNot Nothing Then
                        heard = True
                        Dim broadcast As New Broadcast()
                        Dim problem = CheckBroadcast(frames, broadcast)
                        If problem IsNot Nothing Then
                            pipe.Report("error", ("code", "malformed-broadcast"), ("reason", problem))
                        ElseIf broadcast.Roster IsNot Nothing Then
                            onRoster(broadcast.Roster)
                        Else
                            received += 1
                            pipe.SendEvent("received", {("handle", CObj(broadcast.Handle)), ("text", broadcast.Text)}, Utf8.GetBytes(broadcast.Handle))
                        End If
                    End If

                    frames = If(ready.Contains(requests), ReceiveIfReady(requests), Nothing)
                    If frames IsNot Nothing Then
                        inFlight = False
                        lastRequest = Environment.TickCount64
                        Dim replyRoster As List(Of String) = Nothing
                        Dim problem = CheckReply(frames, replyRoster)
                        If problem IsNot Nothing Then  ' fatal, as for the chat client: the agent stops by itself
                            pipe.Report("error", ("code", problem.Value.Code), ("reason", problem.Value.Reason))
                            Exit Do
                        End If
                        joined = True
                        onRoster(replyRoster)
                        If posting IsNot Nothing Then
                            sent += 1
                            pipe.Report("sent", ("text", posting), ("roster", replyRoster))
                            posting = Nothing
                        End If
                    End If

                    ' The next request, when the chat protocol allows one.
                    If inFlight OrElse Not heard Then Continue Do
                    If Not joined Then
                        request({handle})  ' join
                    ElseIf everyone AndAlso waiting.Count > 0 Then
                        posting = waiting.Dequeue()
                        request({handle, Utf8.GetBytes(posting)})
                    ElseIf Environment.TickCount64 - lastRequest >= KeepaliveMs Then
                        request({handle})  ' keep-alive: silent handles expire from the roster
                    End If
                Loop
            End Using  ' the sockets are closed before we say so
            pipe.Report("stopped", ("sent", sent), ("received", received))
        End Using
    End Sub

    ' --- ticker agent: a ticker subscriber (Ticker.vb) ------------------------------------------

    Private Sub TickerAgent(name As String, ticksEndpoint As String, seed As ULong, monitorOn As Boolean)
        Using pipe As New Pipe("ticker")
            Dim total = 0, malformed = 0
            Using ticks As New SubscriberSocket(),
                  monitor As New SocketMonitor(monitorOn)  ' disposed first: before the sockets close
                ticks.Options.Linger = TimeSpan.Zero
                ticks.Options.MaxMsgSize = Ticker.MaxMessage
                ' Our own topic before we connect: the publisher counts the desk by it, and starts
                ' publishing once every subscriber is there. Symbols come later, as FOLLOW commands.
                ticks.Subscribe(Utf8.GetBytes("@" & name))
                monitor.Attach(ticks, "ticks")
                Dim running = True
                Try
                    ticks.Connect(ticksEndpoint)
                Catch problem As Exception When IsEndpointProblem(problem)
                    pipe.Report("error", ("code", "connect"), ("reason", $"cannot connect: {problem.Message}"))
                    running = False
                End Try
                If running Then pipe.Report("ready", ("name", name))

                Dim followed As New List(Of String)
                Dim polled = New NetMQSocket() {pipe.Socket, ticks}
                Do While running
                    ' No timer here: a command or a tick wakes us; a second at most all the same.
                    Dim ready = PollIn(polled, TimeSpan.FromMilliseconds(1000))
                    ' The ticks first: the poll has already fetched the tick the SUB delivers next, filtered
                    ' by the subscriptions of that moment; a FORGET served before it would meet it after
                    ' the unsubscribe. Served first, it is checked against the set it was filtered by.
                    Dim frames = If(ready.Contains(ticks), ReceiveIfReady(ticks), Nothing)
                    If frames IsNot Nothing Then
                        Dim tick As New Tick()
                        Dim problem = CheckTick(frames, followed, seed, tick)
                        If problem IsNot Nothing Then
                            malformed += 1
                            pipe.Report("error", ("code", problem.Value.Code), ("reason", problem.Value.Reason))
                        Else
                            total += 1
                            pipe.SendEvent("tick", {("symbol", CObj(tick.Symbol)), ("sequence", tick.Sequence), ("timestamp", tick.Timestamp), ("price", tick.Price)},
                                           Encoding.ASCII.GetBytes(tick.Symbol))
                        End If
                    End If

                    Dim command = If(ready.Contains(pipe.Socket), pipe.NextCommand(), Nothing)
                    If command Is Nothing Then
                    ElseIf IsCommand(command, "STOP", 1) Then
                        Exit Do
                    ElseIf Not (IsCommand(command, "FOLLOW", 2) OrElse IsCommand(command, "FORGET", 2)) Then
                        pipe.BadCommand(command, "the ticker agent takes FOLLOW symbol, FORGET symbol and STOP")
                    ElseIf Not IsSymbol(command(1)) Then
                        pipe.BadCommand(command, $"'{Shown(command(1), 32)}' is not 1 to 8 letters A-Z")
                    Else
                        Dim symbol = Encoding.ASCII.GetString(command(1))
                        ' A subscription is a prefix match on frame 0: the topic's NUL keeps GOOG from matching GOOGL.
                        If Word(command(0), "FOLLOW") AndAlso Not followed.Contains(symbol) AndAlso followed.Count = MaxSymbols Then
                            pipe.BadCommand(command, "busy")  ' --follow's bound holds for FOLLOW too
                        ElseIf Word(command(0), "FOLLOW") AndAlso Not followed.Contains(symbol) Then
                            ticks.Subscribe(Topic(symbol))
                            followed.Add(symbol)
                            pipe.Report("subscribed", ("symbol", symbol))
                        ElseIf Word(command(0), "FORGET") AndAlso followed.Remove(symbol) Then
                            ' The SUB filters by its current subscriptions as it delivers: no tick of the
                            ' symbol comes after this, even one already queued.
                            ticks.Unsubscribe(Topic(symbol))
                            pipe.Report("unsubscribed", ("symbol", symbol))
                        End If
                    End If
                Loop
            End Using
            pipe.Report("stopped", ("ticks", total), ("malformed", malformed))
        End Using
    End Sub

    ' --- valuation agent: the source and the sink in one thread (Valuation.vb) -------------------

    Private Sub ValuationAgent(ordersEndpoint As String, resultsEndpoint As String, controlEndpoint As String,
                               wanted As Integer, quiet As Integer, heartbeat As Integer, seed As ULong, monitorOn As Boolean)
        Using pipe As New Pipe("valuation")
            Dim counted = 0, lastTotal = 0L  ' for `stopped`: results of the last trade, its total once complete
            ' [PUSH] PUSH deals orders round-robin to the workers; with no room it is mute (it would
            ' block, never drop), so the agent polls it for room and sends without waiting.
            ' [PULL] PULL fair-queues readies and results from every worker.
            ' [PUB] PUB: the state, level-triggered, to every worker; it never blocks, and drops for a
            ' worker not connected yet or past its high-water mark.
            Using orders As New PushSocket(),
                  results As New PullSocket(),
                  control As New PublisherSocket(),
                  monitor As New SocketMonitor(monitorOn)  ' disposed first: before the sockets close
                For Each socket In New NetMQSocket() {orders, results, control}
                    socket.Options.Linger = TimeSpan.Zero
                    socket.Options.MaxMsgSize = Valuation.MaxMessage
                Next
                ' Except the control PUB's linger: the `finished` published as the trade completes must
                ' still reach the workers if the desk stops right after (they leave when they hear it).
                control.Options.Linger = TimeSpan.FromMilliseconds(1000)
                monitor.Attach(orders, "orders")
                monitor.Attach(results, "results")
                monitor.Attach(control, "control")
                Dim running = True
                Try
                    orders.Bind(ordersEndpoint)
                    results.Bind(resultsEndpoint)
                    control.Bind(controlEndpoint)
                Catch problem As Exception When IsEndpointProblem(problem)
                    pipe.Report("error", ("code", "bind"), ("reason", $"cannot bind: {problem.Message}"))
                    running = False
                End Try
                If running Then
                    ' The bound endpoints (a wildcard port resolved) travel as frames 2-4 too: the main
                    ' thread reports them in the desk's own `ready`, which the workers wait for.
                    Dim bound = {orders.Options.LastEndpoint, results.Options.LastEndpoint, control.Options.LastEndpoint}
                    pipe.SendEvent("ready", {("orders", CObj(bound(0))), ("results", bound(1)), ("control", bound(2))},
                                   bound.Select(AddressOf Encoding.ASCII.GetBytes).ToArray())
                End If

                Dim state = "waiting"
                Dim ready As New HashSet(Of String)  ' workers that said ready for the coming trade
                Dim trading = False  ' a VALUE was taken and its trade is not complete yet
                Dim count = 0  ' orders of the trade
                Dim values As New Dictionary(Of ULong, Long)  ' id -> value, for every id counted
                Dim total = 0L  ' exact: every value is checked, none can overflow it
                Dim priced As New Dictionary(Of String, Integer)
                Dim resent As New SortedSet(Of ULong)
                Dim nextOrder = 1UL  ' the next order not sent yet
                Dim resending As New List(Of ULong), resendNext = 0  ' ids sent again, and how many have gone
                Dim nextBeat = Environment.TickCount64, quietSince = Environment.TickCount64

                Dim setState =
                    Sub(newState As String)
                        state = newState
                        control.SendFrame(Encoding.ASCII.GetBytes(state))  ' at once; the heartbeat repeats it for late joiners
                    End Sub
                Dim tryStart =
                    Sub()
                        ' Each worker heard a control message before saying ready: its SUB cannot miss `go`.
                        If trading AndAlso state = "waiting" AndAlso ready.Count >= wanted Then
                            setState("go")
                            pipe.Report("started", ("workers", ready.Count))
                            quietSince = Environment.TickCount64
                        End If
                    End Sub
                Dim sending = Function() state = "go" AndAlso (nextOrder <= CULng(count) OrElse resendNext < resending.Count)
                ' Send what can go now, never waiting: a send with a zero timeout that fails leaves the
                ' order for a later turn (PUSH has no room while no worker is connected or all are full).
                Dim sendOrders =
                    Sub()
                        For burst = 1 To OrdersPerTurn
                            If Not sending() Then Return
                            Dim id = If(nextOrder <= CULng(count), nextOrder, resending(resendNext))
                            If Not orders.TrySendMultipartBytes(TimeSpan.Zero, OrderFrames(seed, id)) Then Return  ' the same bytes every time
                            If nextOrder <= CULng(count) Then
                                nextOrder += 1UL
                                If nextOrder > CULng(count) Then pipe.Report("sent", ("orders", count))
                            Else
                                resendNext += 1
                                If resendNext = resending.Count Then pipe.Report("resent", ("ids", resending))
                            End If
                            ' The workers get --quiet ms after the last order went out, however long the sending took.
                            If Not sending() Then quietSince = Environment.TickCount64
                        Next
                    End Sub

                ' The PUSH is polled for room (POLLOUT) only while orders wait for it; otherwise it
                ' would wake the poll at once, every turn. So this loop polls NetMQSelector items itself.
                Dim selector As New NetMQSelector()
                Dim items = {New NetMQSelector.Item(pipe.Socket, PollEvents.PollIn),
                             New NetMQSelector.Item(results, PollEvents.PollIn),
                             New NetMQSelector.Item(orders, PollEvents.PollOut)}
                Dim isReady = Function(item As NetMQSelector.Item) item.ResultEvent.HasFlag(PollEvents.PollIn)
                Do While running
                    Dim now = Environment.TickCount64
                    Dim waitMs = Math.Max(0, nextBeat - now)
                    If state = "go" AndAlso Not sending() Then waitMs = Math.Min(waitMs, Math.Max(0, quietSince + quiet - now))
                    selector.Select(items, If(sending(), 3, 2), waitMs)

                    Dim command = If(isReady(items(0)), pipe.NextCommand(), Nothing)
                    If command Is Nothing Then
                    ElseIf IsCommand(command, "STOP", 1) Then
                        Exit Do
                    ElseIf Not IsCommand(command, "VALUE", 2) Then
                        pipe.BadCommand(command, "the valuation agent takes VALUE n and STOP")
                    ElseIf command(1).Length <> 8 OrElse BinaryPrimitives.ReadUInt64BigEndian(command(1)) < 1UL OrElse
                           BinaryPrimitives.ReadUInt64BigEndian(command(1)) > 1000000UL Then
                        pipe.BadCommand(command, "n is an unsigned 64-bit big-endian integer from 1 to 1000000")
                    ElseIf trading Then
                        pipe.BadCommand(command, "busy")
                    Else
                        If state = "finished" Then
                            ready.Clear()  ' the previous trade's workers have left: wait for new ones
                            setState("waiting")
                        End If
                        trading = True
                        count = CInt(BinaryPrimitives.ReadUInt64BigEndian(command(1)))
                        counted = 0
                        values.Clear()
                        total = 0L
                        priced.Clear()
                        resent.Clear()
                        nextOrder = 1UL
                        resending = New List(Of ULong)
                        resendNext = 0
                        tryStart()
                    End If

                    Dim frames = If(isReady(items(1)), ReceiveIfReady(results), Nothing)
                    If frames IsNot Nothing Then
                        If Word(frames(0), "ready") Then
                            Dim worker As String = Nothing
                            Dim problem = CheckReady(frames, worker)
                            If problem IsNot Nothing Then
                                pipe.Report("error", ("code", "malformed-ready"), ("reason", problem))  ' not a worker: it does not count
                            Else
                                If ready.Add(worker) Then pipe.Report("worker", ("name", worker))
                                tryStart()
                            End If
                        Else
                            Dim result As New Result()
                            Dim problem = CheckResult(frames, count, seed, result)
                            If problem IsNot Nothing Then
                                pipe.Report("error", ("code", problem.Value.Code), ("reason", problem.Value.Reason))
                            ElseIf values.ContainsKey(result.Id) AndAlso resent.Contains(result.Id) Then
                                pipe.Report("late-duplicate", ("id", result.Id), ("worker", result.Worker))  ' we asked for it twice
                            ElseIf values.ContainsKey(result.Id) Then
                                pipe.Report("error", ("code", "duplicate"), ("reason", $"a second result for order {result.Id}, from {result.Worker}"))
                            Else
                                values(result.Id) = result.Amount
                                total += result.Amount
                                counted = values.Count
                                priced(result.Worker) = priced.GetValueOrDefault(result.Worker) + 1
                                quietSince = Environment.TickCount64
                                pipe.Report("result", ("id", result.Id), ("worker", result.Worker))
                                If values.Count = count Then
                                    setState("finished")
                                    trading = False
                                    lastTotal = total
                                    pipe.SendEvent("complete", {("total", CObj(total)), ("workers", priced), ("resent", resent.ToList())},
                                                   BigEndianInt64(total))
                                End If
                            End If
                        End If
                    End If

                    sendOrders()
                    now = Environment.TickCount64
                    If state = "go" AndAlso Not sending() AndAlso now - quietSince >= quiet Then
                        ' Nothing acknowledges a PUSH: what was queued for a worker that died is gone.
                        ' The sink's rule, and this thread is also the source: send the missing ids again.
                        resending = Enumerable.Range(1, count).Select(Function(i) CULng(i)).Where(Function(id) Not values.ContainsKey(id)).ToList()
                        resendNext = 0
                        resent.UnionWith(resending)
                        pipe.Report("resend", ("ids", resending))
                        quietSince = now
                        sendOrders()
                    End If
                    If now >= nextBeat Then
                        control.SendFrame(Encoding.ASCII.GetBytes(state))
                        nextBeat = now + heartbeat
                    End If
                Loop
            End Using  ' the control PUB lingers: its last `finished` is still on its way
            pipe.Report("stopped", ("orders", counted), ("total", lastTotal))
        End Using
    End Sub

    ' --- query agent: a CHP facade (Query.vb) ---------------------------------------------------

    Private Sub QueryAgent(name As String, snapshotEndpoint As String, updatesEndpoint As String, collectorEndpoint As String,
                           subtrees As String(), monitorOn As Boolean)
        Using pipe As New Pipe("query")
            ' The facade's map, watermarks and checks, reporting up the pipe.
            Dim facade As New Facade(name, subtrees, count:=0, writeCount:=0, emit:=AddressOf pipe.Report)
            ' The facade's sockets (Query.vb): SUB, DEALER and the collector's XPUB, in that order.
            ' [DEALER] DEALER: every subtree's snapshot request in flight at once, without REQ's lockstep
            ' and without an envelope; only the KTHXBAI's subtree says which request a reply answers.
            ' [XPUB] The collector's end is an XPUB: a PUB that hands us the collector's subscription as
            ' a message (first byte 1), so that we write only once the engine hears us.
            Using updates As New SubscriberSocket(),
                  snapshot As New DealerSocket(),
                  collector As New XPublisherSocket(),
                  monitor As New SocketMonitor(monitorOn)  ' disposed first: before the sockets close
                For Each socket In New NetMQSocket() {updates, snapshot, collector}
                    socket.Options.Linger = TimeSpan.Zero
                    socket.Options.MaxMsgSize = Query.MaxMessage
                Next
                collector.Options.Linger = TimeSpan.FromMilliseconds(1000)  ' our last write may still be queued as we stop
                monitor.Attach(updates, "updates")
                monitor.Attach(snapshot, "snapshot")
                monitor.Attach(collector, "collector")
                Dim running = True
                Try
                    updates.Connect(updatesEndpoint)
                    snapshot.Connect(snapshotEndpoint)
                    collector.Connect(collectorEndpoint)
                Catch problem As Exception When IsEndpointProblem(problem)
                    pipe.Report("error", ("code", "connect"), ("reason", $"cannot connect: {problem.Message}"))
                    running = False
                End Try
                If running Then SubscribeUpdates(updates, subtrees)  ' connected first: HUGZ must go out last
                If running Then pipe.Report("ready", ("name", name), ("subtrees", subtrees))

                Dim hugged = False  ' a HUGZ came: our subscriptions are in place, the snapshots are asked for
                Dim collectorLive = False
                Dim writes As New Queue(Of (Key As String, Value As Byte()))  ' WRITEs not sent yet
                Dim unread As New List(Of (Key As String, Value As Byte()))  ' sent, not read back yet
                ' The facade's steps as phases of one loop, each polling its own sockets: the HUGZ
                ' (updates read, dropped until it comes); the snapshots (the SUB left unread meanwhile:
                ' its updates wait, in order); then the updates. The phase says what is polled, and so
                ' what can be ready.
                Dim awaitingHugz = New NetMQSocket() {pipe.Socket, updates, collector}
                Dim syncing = New NetMQSocket() {pipe.Socket, snapshot, collector}
                Dim live = New NetMQSocket() {pipe.Socket, updates, snapshot, collector}
                Do While running
                    Dim synced = hugged AndAlso facade.Waiting.Count = 0
                    ' No timer here: a command or a message wakes us; a second at most all the same.
                    ' Then one message from each ready socket, in the order pipe, SUB, DEALER, XPUB.
                    Dim ready = PollIn(If(synced, live, If(hugged, syncing, awaitingHugz)), TimeSpan.FromMilliseconds(1000))

                    Dim command = If(ready.Contains(pipe.Socket), pipe.NextCommand(), Nothing)
                    If command Is Nothing Then
                    ElseIf IsCommand(command, "STOP", 1) Then
                        Exit Do
                    ElseIf Not IsCommand(command, "WRITE", 3) Then
                        pipe.BadCommand(command, "the query agent takes WRITE key value and STOP")
                    ElseIf Not IsKey(command(1)) OrElse facade.SubtreesOf(Latin1(command(1))).Count = 0 Then
                        pipe.BadCommand(command, $"'{Shown(command(1), 32)}' is not a key in our subtrees: it could never be read back")
                    ElseIf command(2).Length < 1 OrElse command(2).Length > 256 Then
                        pipe.BadCommand(command, $"a value of {command(2).Length} bytes, not 1 to 256")
                    ElseIf writes.Count >= MaxWaiting Then
                        pipe.BadCommand(command, "busy")
                    Else
                        writes.Enqueue((Latin1(command(1)), command(2)))
                    End If

                    Dim frames = If(ready.Contains(updates), ReceiveMessage(updates), Nothing)
                    If frames Is Nothing Then
                    ElseIf Not hugged Then
                        If IsHugz(frames) Then  ' whatever comes before it is dropped: the snapshots cover it
                            hugged = True
                            AskSnapshots(snapshot, subtrees)
                        End If
                    ElseIf facade.OnUpdate(frames) Then
                        ' Applied when above the watermarks: then it may be one of our writes coming back.
                        Dim key = Latin1(frames(0)), value = frames(4)
                        ' Every update applied, for the page: the key travels in frame 2.
                        pipe.SendEvent("applied", {("key", CObj(key)), ("value", HexOf(value)), ("sequence", facade.Last)}, frames(0))
                        Dim mine = unread.FindIndex(Function(write) write.Key = key AndAlso write.Value.AsSpan().SequenceEqual(value))
                        If mine >= 0 Then
                            unread.RemoveAt(mine)
                            pipe.SendEvent("read-back", {("key", CObj(key)), ("value", HexOf(value)), ("sequence", facade.Last)}, frames(0), value)
                        End If
                    End If

                    frames = If(ready.Contains(snapshot), ReceiveMessage(snapshot), Nothing)
                    If frames Is Nothing Then
                    ElseIf synced Then
                        pipe.Report("error", ("code", "unexpected-snapshot"), ("reason", $"'{Shown(frames(0), 32)}' after every KTHXBAI"))
                    Else
                        facade.OnSnapshot(frames)  ' KVSYNCs, then each subtree's KTHXBAI: its watermark
                    End If

                    ' The collector's subscription to everything: from now on the engine hears our writes.
                    Dim frame = If(ready.Contains(collector), ReceiveFrameIfReady(collector), Nothing)
                    If frame IsNot Nothing AndAlso IsSubscribeAll(frame) Then collectorLive = True

                    If hugged AndAlso facade.Waiting.Count = 0 AndAlso collectorLive Then
                        Do While writes.Count > 0
                            Dim write = writes.Dequeue()
                            collector.SendMultipartBytes(KvsetFrames(write.Key, write.Value, 0))  ' XPUB never blocks
                            unread.Add(write)
                            pipe.Report("wrote", ("key", write.Key), ("value", HexOf(write.Value)), ("ttl", 0))
                        Loop
                    End If
                Loop
            End Using  ' the collector XPUB lingers: our last write is still on its way
            pipe.Report("stopped", ("sequence", facade.Last), ("first", facade.First),
                        ("map", facade.Map.ToDictionary(Function(entry) entry.Key, Function(entry) HexOf(entry.Value))),
                        ("applied", facade.Applied), ("discarded", facade.Discarded))
        End Using
    End Sub

    ' --- the main thread ------------------------------------------------------------------------

    Private Enum Ending
        Done  ' the scenario is done
        Signal  ' SIGTERM or SIGINT
        Timeout  ' --timeout
        AgentFailed  ' an agent stopped by itself
    End Enum

    ''' <summary>The main thread: its pipe ends, the agents' threads and the scenario's counters.</summary>
    Private NotInheritable Class Trader
        Private ReadOnly _args As ParseResult
        Private ReadOnly _name As String
        Private ReadOnly _stopSignal As StopSignal
        Private ReadOnly _deadline As Deadline
        Private ReadOnly _pipes As New List(Of PairSocket)  ' our ends, one per started agent, in AgentNames order
        Private ReadOnly _threads As New List(Of Thread)
        Private ReadOnly _stopped As New HashSet(Of String)  ' agents whose `stopped` has come
        Private _failed As String  ' the agent that stopped by itself
        Private _bound As String() = {"", "", ""}  ' the valuation agent's orders, results, control
        Private ReadOnly _web As Web  ' the page, with --http; Nothing without
        ' The scenario (PROTOCOL.md, "The scenario is done when")
        Private ReadOnly _follow As String(), _forget As String, _posts, _tradeSize, _subtreeCount As Integer
        Private ReadOnly _following As List(Of String)  ' the symbols whose ticks it waits for: --follow, less what was forgotten
        Private ReadOnly _ticks As New Dictionary(Of String, Integer)  ' symbol -> ticks
        Private ReadOnly _received As New Dictionary(Of String, Integer)  ' handle -> posts received
        Private _forgotten As Boolean, _given, _sent, _synced As Integer
        Private _written As String  ' the total written to /desks/NAME/valuation; Nothing before `complete`
        Private _readBack As Boolean
        ' The trade, for the page: 409 while one runs, and its progress instead of its results
        Private _trading As Boolean  ' VALUE sent, its `complete` not seen yet
        Private _finished As Boolean  ' the scenario has been done: with the page, it stays done
        Private _orders, _results, _resultsShown As Integer  ' the trade's size, its results, and as last published
        Private _shownAt As Long  ' when the progress was last published

        Public Sub New(args As ParseResult, stopSignal As StopSignal, deadline As Deadline, web As Web)
            _args = args
            _web = web
            _name = args.GetValue(Of String)("--name")
            _stopSignal = stopSignal
            _deadline = deadline
            _follow = args.GetValue(Of String())("--follow").Distinct().ToArray()
            _following = _follow.ToList()
            _forget = args.GetValue(Of String)("--forget")
            _posts = args.GetValue(Of Integer)("--posts")
            _tradeSize = args.GetValue(Of Integer)("--trade")
            _subtreeCount = args.GetValue(Of String())("--subtrees").Length
        End Sub

        Private ReadOnly Property ValuationKey As String
            Get
                Return $"/desks/{_name}/valuation"
            End Get
        End Property

        Private Function PipeOf(agent As String) As PairSocket
            Return _pipes(Array.IndexOf(AgentNames, agent))
        End Function

        ''' <summary>
        ''' A command down a pipe, never waiting: a live agent reads its pipe whenever it is readable,
        ''' so there is room (1000 messages); one that stopped has closed its end, and a blocking send
        ''' to a PAIR without a peer would wait for ever.
        ''' </summary>
        Private Sub SendCommand(agent As String, ParamArray frames As Byte()())
            If Not PipeOf(agent).TrySendMultipartBytes(TimeSpan.Zero, frames) Then
                Log($"desk: no room for {Encoding.ASCII.GetString(frames(0))} in the {agent} agent's pipe")
            End If
        End Sub

        ''' <summary>
        ''' Every line the desk writes goes through here: to stdout, and to the page's event streams
        ''' (Web.Publish), which keep it for the replay under `key` when it has one. The main thread is
        ''' the only writer of stdout but for the socket monitors (SocketMonitor.vb, to stdout only);
        ''' WriteEventLine writes each line whole under one lock: lines never interleave.
        ''' </summary>
        Private Sub Say(line As Byte(), Optional key As String = Nothing, Optional toPage As Boolean = True, Optional name As String = Nothing)
            WriteEventLine(line, name)
            If toPage Then _web?.Publish(line, key)
        End Sub

        ''' <summary>One of the desk's own events (no "agent").</summary>
        Private Sub Report(name As String, ParamArray fields As (Key As String, Value As Object)())
            Say(EventJson(name, fields), name:=name)
        End Sub

        ''' <summary>The next event of an agent, without waiting; its frame 1 is written as it is.</summary>
        Private Function NextEvent(index As Integer) As List(Of Byte())
            Dim frames = ReceiveIfReady(_pipes(index))
            If frames Is Nothing Then Return Nothing
            Dim agent = AgentNames(index), name = Encoding.ASCII.GetString(frames(0))
            If agent = "valuation" AndAlso name = "result" Then
                ' One per order, a million in a big trade: counted for the page's progress, not sent to it.
                _results += 1
                Say(frames(1), toPage:=False)
            Else
                If agent = "valuation" AndAlso name = "complete" Then ShowProgress()  ' the last count, right before
                ' The replay keeps the latest line of each symbol's ticks and of each key applied.
                Dim key = If(agent = "ticker" AndAlso name = "tick", $"tick {Encoding.ASCII.GetString(frames(2))}",
                             If(agent = "query" AndAlso name = "applied", $"applied {Latin1(frames(2))}", Nothing))
                Say(frames(1), key)
            End If
            If name = "stopped" Then _stopped.Add(agent)
            Return frames
        End Function

        ''' <summary>The trade's progress, for the page only (never stdout): results so far of its size.</summary>
        Private Sub ShowProgress()
            If _web Is Nothing OrElse _results = _resultsShown Then Return
            _web.Publish(EventJson("progress", {("agent", CObj("valuation")), ("results", _results), ("orders", _orders)}), "progress")
            _resultsShown = _results
            _shownAt = Environment.TickCount64
        End Sub

        ''' <summary>VALUE down the valuation agent's pipe: the scenario's trade, or the page's.</summary>
        Private Sub StartTrade(orders As Integer)
            SendCommand("valuation", Encoding.ASCII.GetBytes("VALUE"), BigEndianUInt64(CULng(orders)))
            _trading = True
            _orders = orders
            _results = 0
            _resultsShown = 0
        End Sub

        ''' <summary>FOLLOW or FORGET down the ticker agent's pipe; the scenario then waits for the
        ''' symbol's ticks, or no longer does.</summary>
        Private Sub ChangeFollowing(command As String, symbol As String)
            SendCommand("ticker", Encoding.ASCII.GetBytes(command), Encoding.ASCII.GetBytes(symbol))
            If command = "FORGET" Then
                _following.Remove(symbol)
                If symbol = _forget Then _forgotten = True
            ElseIf Not _following.Contains(symbol) Then
                _following.Add(symbol)
            End If
        End Sub

        ''' <summary>
        ''' A command from the page (Web.Receive): the body checked as the agent would check it, then
        ''' reported as a `command` event and handed to the agent: 204. What the agent does with it
        ''' arrives as its own events.
        ''' </summary>
        Private Function OnCommand(target As String, body As Byte()) As (Code As Integer, Reason As String)
            Select Case target
                Case "/follow", "/forget"
                    If Not IsSymbol(body) Then Return (400, "a symbol is 1 to 8 letters A-Z")
                    Dim command = If(target = "/follow", "FOLLOW", "FORGET"), symbol = Encoding.ASCII.GetString(body)
                    Report("command", ("command", command), ("symbol", symbol))
                    ChangeFollowing(command, symbol)
                Case "/chat"
                    ' A text is good when the chat server would accept it: 1 to 4096 bytes of UTF-8.
                    Dim problem = CheckRequest(New List(Of Byte()) From {Utf8.GetBytes(_name), body})
                    If problem IsNot Nothing Then Return (400, problem.Value.Reason)
                    Report("command", ("command", "POST"), ("text", Utf8.GetString(body)))
                    SendCommand("chat", Encoding.ASCII.GetBytes("POST"), body)
                Case Else  ' /value
                    Dim orders As Integer
                    If body.Length = 0 OrElse body.Length > 7 OrElse Not body.All(Function(b) b >= AscW("0"c) AndAlso b <= AscW("9"c)) OrElse
                       Not Integer.TryParse(Encoding.ASCII.GetString(body), orders) OrElse orders < 1 OrElse orders > 1000000 Then
                        Return (400, "the number of orders is decimal digits, from 1 to 1000000")
                    End If
                    If _trading Then Return (409, $"a trade of {_orders} orders runs: {_results} results so far")
                    Report("command", ("command", "VALUE"), ("orders", orders))
                    StartTrade(orders)
            End Select
            Return (204, Nothing)
        End Function

        Public Function Run() As Integer
            ' Start-up: one agent at a time, in order; each ready line is the agent's own proof that
            ' its sockets exist.
            Dim ending As Ending? = Nothing
            For Each agent In AgentNames
                ending = Start(agent)
                If ending IsNot Nothing Then Exit For
            Next
            If ending Is Nothing Then
                Report("ready", ("name", _name), ("orders", _bound(0)), ("results", _bound(1)), ("control", _bound(2)),
                       ("http", If(_web?.Endpoint, "")))
                _web?.Serving()  ' the start-up lines, replayed first to every page, end with that ready
                For Each symbol In _follow
                    SendCommand("ticker", Encoding.ASCII.GetBytes("FOLLOW"), Encoding.ASCII.GetBytes(symbol))
                Next
                If _tradeSize > 0 Then StartTrade(_tradeSize)
                ending = Serve()
            End If
            Return ShutDown(ending.Value)
        End Function

        ''' <summary>Start one agent: bind its pipe, start its thread, wait for its `ready`. Nothing once
        ''' it came, or why the desk must stop.</summary>
        Private Function Start(agent As String) As Ending?
            Dim pipe As New PairSocket()
            pipe.Options.Linger = TimeSpan.Zero
            ' [inproc] Bound before the agent's thread connects to it: the inproc order that always
            ' works. Both ends live in NetMQ's one context, which is what makes the endpoint exist.
            pipe.Bind(PipeEndpoint(agent))
            _pipes.Add(pipe)
            ' A background thread: one that never acknowledges STOP cannot keep the process alive.
            Dim thread As New Thread(AgentBody(agent)) With {.Name = $"desk-{agent}", .IsBackground = True}
            _threads.Add(thread)
            thread.Start()
            Return AwaitReady(_pipes.Count - 1)
        End Function

        ''' <summary>
        ''' The agent's function and its configuration, copied: strings and numbers, and arrays of its
        ''' own. Nothing else is shared with its thread; everything after this comes down its pipe.
        ''' </summary>
        Private Function AgentBody(agent As String) As ThreadStart
            Dim text = Function(flag As String) _args.GetValue(Of String)(flag)
            Dim number = Function(flag As String) _args.GetValue(Of Integer)(flag)
            Dim name = _name, seed = _args.GetValue(Of ULong)("--seed")  ' locals: the lambdas must not reach into Me
            Dim monitor = MonitorOn(_args)
            Select Case agent
                Case "chat"
                    Dim requests = text("--chat-requests"), broadcasts = text("--chat-broadcasts"), clients = number("--chat-clients")
                    Return Sub() ChatAgent(name, requests, broadcasts, clients, monitor)
                Case "ticker"
                    Dim ticks = text("--ticks")
                    Return Sub() TickerAgent(name, ticks, seed, monitor)
                Case "valuation"
                    Dim orders = text("--orders"), results = text("--results"), control = text("--control")
                    Dim workers = number("--workers"), quiet = number("--quiet"), heartbeat = number("--heartbeat")
                    Return Sub() ValuationAgent(orders, results, control, workers, quiet, heartbeat, seed, monitor)
                Case Else
                    Dim snapshot = text("--snapshot"), updates = text("--updates"), collector = text("--collector")
                    Dim subtrees = _args.GetValue(Of String())("--subtrees").ToArray()
                    Return Sub() QueryAgent(name, snapshot, updates, collector, subtrees, monitor)
            End Select
        End Function

        ''' <summary>Wait for an agent's `ready`: Nothing once it came, or why the desk must stop.</summary>
        Private Function AwaitReady(index As Integer) As Ending?
            Do
                If _stopSignal.Raised Then Return Ending.Signal
                If _deadline.Expired() Then Return Ending.Timeout
                If Not PollIn(_pipes(index), _deadline.Cap(SignalCheckMs)) Then Continue Do
                Dim frames = NextEvent(index)
                If frames Is Nothing Then Continue Do
                If Word(frames(0), "ready") Then
                    If AgentNames(index) = "valuation" Then _bound = frames.Skip(2).Select(AddressOf Encoding.ASCII.GetString).ToArray()
                    Return Nothing
                End If
                If Word(frames(0), "stopped") Then  ' its bind or connect failed: it said why, then stopped
                    _failed = AgentNames(index)
                    Return Ending.AgentFailed
                End If
            Loop
        End Function

        ''' <summary>The loop: every event written, then acted on, until the scenario is done or must
        ''' stop. With the page, the desk serves on after the scenario is done, until it must stop.</summary>
        Private Function Serve() As Ending
            Dim sockets = _pipes.Cast(Of NetMQSocket)().Concat(If(_web Is Nothing, {}, {_web.Socket})).ToArray()
            Do
                _finished = _finished OrElse IsDone()
                If _web Is Nothing AndAlso _finished Then Return Ending.Done
                If _stopSignal.Raised Then Return Ending.Signal
                If _deadline.Expired() Then Return Ending.Timeout
                ' [poll] One poll over the four pipes and the STREAM socket; a signal does not wake it
                ' (.NET takes signals on a thread of its own: no EINTR), nor does a connection's
                ' deadline, hence at most 100 ms. Then each ready socket, without waiting.
                Dim ready = PollIn(sockets, _deadline.Cap(SignalCheckMs))
                For index = 0 To _pipes.Count - 1  ' one event per pipe and turn: none can starve the others
                    If Not ready.Contains(_pipes(index)) Then Continue For
                    Dim frames = NextEvent(index)
                    If frames Is Nothing Then Continue For
                    If Word(frames(0), "stopped") Then  ' nobody asked it to: it cannot go on
                        _failed = AgentNames(index)
                        Return Ending.AgentFailed
                    End If
                    Act(AgentNames(index), frames)
                Next
                If _web IsNot Nothing Then
                    Dim now = Environment.TickCount64
                    ' The page drains on purpose, up to Web.MaxPerTurn (100) messages a turn: an HTTP
                    ' request may come in several pieces, and the pipes still get their turn.
                    If ready.Contains(_web.Socket) Then _web.Receive(now, AddressOf OnCommand)
                    If now - _shownAt >= ProgressMs Then ShowProgress()  ' at most every 100 ms, while it changes
                    _web.Expire(now)
                End If
            Loop
        End Function

        ''' <summary>What the main thread does with an event: frame 0 names it, frames 2... carry its values.</summary>
        Private Sub Act(agent As String, frames As List(Of Byte()))
            Select Case Encoding.ASCII.GetString(frames(0))
                Case "tick"  ' prices drive the chat, and the forgetting
                    Dim symbol = Encoding.ASCII.GetString(frames(2))
                    _ticks(symbol) = _ticks.GetValueOrDefault(symbol) + 1
                    If _given < _posts Then
                        _given += 1
                        SendCommand("chat", Encoding.ASCII.GetBytes("POST"), Utf8.GetBytes(PostText(_name, _given)))
                    End If
                    If symbol = _forget AndAlso Not _forgotten AndAlso _ticks(symbol) >= _args.GetValue(Of Integer)("--forget-after") Then
                        ChangeFollowing("FORGET", symbol)
                    End If
                Case "sent"
                    If agent = "chat" Then _sent += 1  ' the valuation agent's `sent` is its orders'
                Case "received"
                    Dim handle = Utf8.GetString(frames(2))
                    _received(handle) = _received.GetValueOrDefault(handle) + 1
                Case "complete"  ' the valuation goes to the engine, and must come back (the page's trades' too)
                    _trading = False
                    _readBack = False
                    _written = BinaryPrimitives.ReadInt64BigEndian(frames(2)).ToString(CultureInfo.InvariantCulture)
                    SendCommand("query", Encoding.ASCII.GetBytes("WRITE"), Encoding.ASCII.GetBytes(ValuationKey), Encoding.ASCII.GetBytes(_written))
                Case "synced"
                    _synced += 1
                Case "read-back"
                    If _written IsNot Nothing AndAlso Encoding.ASCII.GetString(frames(2)) = ValuationKey AndAlso
                       Encoding.ASCII.GetString(frames(3)) = _written Then _readBack = True
            End Select
        End Sub

        ''' <summary>What the scenario still waits for, for people; empty when it is done.</summary>
        Private Function Missing() As List(Of String)
            Dim parts As New List(Of String)
            Dim tickCount = _args.GetValue(Of Integer)("--tick-count")
            For Each symbol In _following
                If _ticks.GetValueOrDefault(symbol) < tickCount Then parts.Add($"{symbol} ticks {_ticks.GetValueOrDefault(symbol)}/{tickCount}")
            Next
            If _forget <> "" AndAlso Not _forgotten Then parts.Add($"{_forget} not forgotten")
            If _sent < _posts Then parts.Add($"posts sent {_sent}/{_posts}")
            ' Every chat participant posts as many as we do. With --posts 0 nobody posts: nothing to count.
            Dim clients = _args.GetValue(Of Integer)("--chat-clients")
            Dim heardFrom = _received.Values.Where(Function(n) n >= _posts).Count()
            If _posts > 0 AndAlso heardFrom < clients Then parts.Add($"handles with every post {heardFrom}/{clients}")
            If _tradeSize > 0 AndAlso _written Is Nothing Then parts.Add("trade not complete")
            If _synced < _subtreeCount Then parts.Add($"subtrees synced {_synced}/{_subtreeCount}")
            If _tradeSize > 0 AndAlso Not _readBack Then parts.Add("valuation not read back")
            Return parts
        End Function

        Private Function IsDone() As Boolean
            Return Missing().Count = 0
        End Function

        ''' <summary>The shut-down, the same whatever ended the loop; returns the exit code.</summary>
        Private Function ShutDown(ending As Ending) As Integer
            Dim missingNow = String.Join(", ", Missing())
            Dim complete = (_finished OrElse missingNow = "") AndAlso (ending = Ending.Done OrElse ending = Ending.Signal)
            Log($"desk {_name}: {ending.ToString().ToLowerInvariant()}, stopping the agents")
            ' 1. STOP down every pipe at once: the agents are independent.
            For index = 0 To _pipes.Count - 1
                If Not _stopped.Contains(AgentNames(index)) Then SendCommand(AgentNames(index), Encoding.ASCII.GetBytes("STOP"))
            Next
            ' 2. Every `stopped`, 5 s at most. What an agent sent before it is still written, in order.
            Dim limit = Environment.TickCount64 + StopWaitMs
            Do While _stopped.Count < _pipes.Count AndAlso Environment.TickCount64 < limit
                Dim ready = PollIn(_pipes, TimeSpan.FromMilliseconds(Math.Max(0, limit - Environment.TickCount64)))
                For index = 0 To _pipes.Count - 1
                    If ready.Contains(_pipes(index)) AndAlso Not _stopped.Contains(AgentNames(index)) Then NextEvent(index)
                Next
            Loop
            If _stopped.Count < _pipes.Count Then
                If ending = Ending.Timeout OrElse ending = Ending.AgentFailed Then
                    Dim failure = Outcome(ending, missingNow)
                    Report("error", ("code", failure.Code), ("reason", failure.Reason))
                End If
                Dim stuck = AgentNames.Take(_pipes.Count).Where(Function(agent) Not _stopped.Contains(agent))
                Report("error", ("code", "agent-stuck"), ("reason", $"no stopped from {String.Join(", ", stuck)} within {StopWaitMs} ms of STOP"))
                ' Exit at once, without terminating the context: it would stop the stuck agent's
                ' sockets under its feet (libzmq's would wait for them for ever).
                Environment.Exit(1)
            End If
            ' 3. Join every agent's thread, then close our pipe ends.
            For Each thread In _threads
                thread.Join()
            Next
            For Each pipe In _pipes
                pipe.Dispose()
            Next
            ' The STREAM socket too (linger 0: an open event stream has nothing worth waiting for),
            ' before the context: NetMQ's cleanup waits for every socket.
            _web?.Dispose()
            ' 4. Terminate the context: it returns once every socket is closed and its linger has run
            ' out (the control PUB's `finished`, the collector XPUB's last write).
            NetMQConfig.Cleanup(block:=True)
            ' 5. Report how it ended.
            Select Case ending
                Case Ending.Done, Ending.Signal
                    Report("done", ("complete", complete), ("agents", AgentNames.Where(AddressOf _stopped.Contains).ToList()))
                    Return 0
                Case Else
                    Dim failure = Outcome(ending, missingNow)
                    Report("error", ("code", failure.Code), ("reason", failure.Reason))
                    Return 1
            End Select
        End Function

        Private Function Outcome(ending As Ending, missingNow As String) As Failure
            Dim timeout = _args.GetValue(Of Integer)("--timeout")
            If ending = Ending.Timeout AndAlso _finished Then Return New Failure("timeout", $"the page was served for {timeout} ms")
            If ending = Ending.Timeout Then Return New Failure("timeout", $"not done after {timeout} ms: {missingNow}")
            Return New Failure("agent-failed", $"the {_failed} agent stopped by itself")
        End Function
    End Class

    Private Function RunTrader(args As ParseResult) As Integer
        ' Every flag is checked before any thread starts: a bad one is exit 2 (Usage).
        Dim name = args.GetValue(Of String)("--name")
        Dim forget = args.GetValue(Of String)("--forget")
        If forget <> "" AndAlso Not args.GetValue(Of String())("--follow").Contains(forget) Then
            Throw New Usage($"--forget {forget} is not one of --follow")
        End If
        Dim home = $"/desks/{name}/"  ' the desk's keys: its valuation must be in a subtree it mirrors, to be read back
        If Not args.GetValue(Of String())("--subtrees").Any(Function(tree) home.StartsWith(tree, StringComparison.Ordinal)) Then
            Throw New Usage($"--subtrees must hold {home}")
        End If
        ' With --http, the STREAM socket is bound now, before any thread starts: a failed bind is
        ' `error` `bind`, exit 1. The Trader closes it after the agents are joined.
        Dim http = args.GetValue(Of String)("--http")
        Dim web = If(http = "", Nothing, New Web(http, MonitorOn(args)))
        ' One context for the process: NetMQ's implicit one, which every socket of every thread uses,
        ' so inproc:// endpoints bound here are found by the agents' connects.
        Using stopSignal As New StopSignal()
            Return New Trader(args, stopSignal, New Deadline(args.GetValue(Of Integer)("--timeout")), web).Run()
        End Using
    End Function
End Module
