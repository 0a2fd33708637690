' ticker: data distribution over PUB/SUB with an XSUB/XPUB proxy (examples/ticker/PROTOCOL.md).
Imports System.Buffers.Binary
Imports System.CommandLine
Imports System.CommandLine.Parsing
Imports System.Text
Imports System.Threading
Imports NetMQ
Imports NetMQ.Sockets

Public Module Ticker
    ' [max size] MaxMsgSize on every socket, set before bind or connect: NetMQ drops a bigger frame
    ' together with the connection that sent it. The largest legal frames are a subscription to "@"
    ' and a 32-byte name (34 bytes) and a tick's 9-byte topic; a long subscription could otherwise
    ' overflow the stack in NetMQ's subscription trie.
    Public Const MaxMessage = 256  ' bytes

    Public Function Roles() As Command
        Dim publisher As New Command("publisher", "publish ticks once the subscribers are there") From {
            Endpoint("--ticks", "tcp://127.0.0.1:5557"),
            SymbolsOption("--symbols", "AAPL,GOOG,GOOGL,MSFT,IBM"),
            UInt64Option("--seed", 1),
            AtLeast("--subscribers", 1, defaultValue:=1),
            AtLeast("--interval", 1, defaultValue:=2),
            AtLeast("--timeout", 0, defaultValue:=0),
            MonitorOption()}
        publisher.SetAction(AddressOf RunPublisher)

        Dim proxy As New Command("proxy", "forward ticks downstream and subscriptions upstream") From {
            Endpoint("--upstream", "tcp://127.0.0.1:5557"),
            Endpoint("--downstream", "tcp://127.0.0.1:5558"),
            AtLeast("--timeout", 0, defaultValue:=0),
            MonitorOption()}
        proxy.SetAction(AddressOf RunProxy)

        Dim subscriber As New Command("subscriber", "receive and check the ticks of some symbols") From {
            Endpoint("--ticks", "tcp://127.0.0.1:5557"),
            NameOption("--name"),
            SymbolsOption("--symbols"),
            AtLeast("--count", 1, defaultValue:=20),
            UInt64Option("--seed", 1),
            SwitchOption("--switch"),
            AtLeast("--switch-after", 1, defaultValue:=10),
            AtLeast("--timeout", 0, defaultValue:=30000),
            MonitorOption()}
        subscriber.SetAction(AddressOf RunSubscriber)

        Dim encode As New Command("encode", "print the frames of one tick (the test vectors)") From {
            UInt64Option("--seed"),
            New [Option](Of String)("--symbol") With {.Required = True, .CustomParser = Function(r) CheckSymbol(r.Tokens.Single().Value, r)},
            UInt64Option("--sequence"),
            New [Option](Of Long)("--timestamp") With {.Required = True}}
        encode.SetAction(AddressOf RunEncode)

        Return New Command("ticker", "data distribution over PUB/SUB, with an XSUB/XPUB proxy") From {
            publisher, proxy, subscriber, encode}
    End Function

    ''' <summary>A symbol is 1 to 8 letters A-Z; anything else is a parse error.</summary>
    Public Function CheckSymbol(text As String, result As ArgumentResult) As String
        If text.Length < 1 OrElse text.Length > 8 OrElse Not text.All(Function(c) c >= "A"c AndAlso c <= "Z"c) Then
            result.AddError($"a symbol is 1 to 8 letters A-Z, not '{text}'")
        End If
        Return text
    End Function

    Public Const MaxSymbols = 32

    ''' <summary>A comma-separated list of 1 to MaxSymbols symbols, none twice: every flag that takes
    ''' symbols parses it here. Required unless there is a default.</summary>
    Public Function SymbolsOption(name As String, Optional defaultValue As String = Nothing) As [Option](Of String())
        Dim parse =
            Function(text As String, result As ArgumentResult)
                Dim symbols = text.Split(","c).Select(Function(part) CheckSymbol(part, result)).ToArray()
                If symbols.Length > MaxSymbols Then
                    result.AddError($"{name} takes 1 to {MaxSymbols} symbols, not {symbols.Length}")
                ElseIf symbols.Distinct().Count() <> symbols.Length Then
                    result.AddError($"{name} takes each symbol once")
                End If
                Return symbols
            End Function
        Dim opt As New [Option](Of String())(name) With {
            .Arity = ArgumentArity.ExactlyOne,
            .CustomParser = Function(result) parse(result.Tokens.Single().Value, result)}
        If defaultValue Is Nothing Then
            opt.Required = True
        Else
            opt.DefaultValueFactory = Function(result) parse(defaultValue, result)
        End If
        Return opt
    End Function

    ''' <summary>OLD:NEW, two symbols; none by default. RunSubscriber checks them against --symbols.</summary>
    Private Function SwitchOption(name As String) As [Option](Of (Old As String, [New] As String)?)
        Return New [Option](Of (Old As String, [New] As String)?)(name) With {
            .CustomParser =
                Function(result)
                    Dim parts = result.Tokens.Single().Value.Split(":"c, 2)
                    Return (CheckSymbol(parts(0), result), CheckSymbol(If(parts.Length = 2, parts(1), ""), result))
                End Function}
    End Function

    ' --- the tick: prices anyone can recompute (the generator is in Prng.vb) -----------------------

    Public Function Cents(seed As ULong, symbol As String, sequence As ULong) As ULong
        Return 1000UL + SplitMix64(seed Xor Fnv1a64(Encoding.ASCII.GetBytes(symbol)) Xor (sequence * Golden)) Mod 99001UL
    End Function

    ''' <summary>Frame 0: the symbol and a NUL, so that subscribing to GOOG does not also match GOOGL.</summary>
    Public Function Topic(symbol As String) As Byte()
        Return Encoding.ASCII.GetBytes(symbol & vbNullChar)
    End Function

    ''' <summary>1 to 8 letters A-Z, then the NUL.</summary>
    Public Function IsTopic(data As Byte()) As Boolean
        Return data.Length >= 2 AndAlso data.Length <= 9 AndAlso data.Last() = 0 AndAlso
               data.Take(data.Length - 1).All(Function(b) b >= AscW("A"c) AndAlso b <= AscW("Z"c))
    End Function

    Public Function TickFrames(seed As ULong, symbol As String, sequence As ULong, timestamp As Long) As Byte()()
        Dim price = Cents(seed, symbol, sequence) / 100.0  ' one IEEE division, the same in every language
        Dim frames = {Topic(symbol), New Byte(7) {}, New Byte(7) {}, New Byte(7) {}}
        ' Big-endian (network order): unsigned 64-bit, signed 64-bit, IEEE binary64.
        BinaryPrimitives.WriteUInt64BigEndian(frames(1), sequence)
        BinaryPrimitives.WriteInt64BigEndian(frames(2), timestamp)
        BinaryPrimitives.WriteDoubleBigEndian(frames(3), price)
        Return frames
    End Function

    Private Function RunEncode(args As ParseResult) As Integer
        Dim seed = args.GetValue(Of ULong)("--seed")
        Dim symbol = args.GetValue(Of String)("--symbol")
        Dim sequence = args.GetValue(Of ULong)("--sequence")
        Dim frames = TickFrames(seed, symbol, sequence, args.GetValue(Of Long)("--timestamp"))
        Emit("encoded", ("frames", frames.Select(Function(frame) Convert.ToHexStringLower(frame)).ToList()),
                        ("cents", Cents(seed, symbol, sequence)))
        Emit("done")
        Return 0
    End Function

    ' --- publisher -------------------------------------------------------------------------------

    Private Function RunPublisher(args As ParseResult) As Integer
        Dim symbols = args.GetValue(Of String())("--symbols")
        Dim seed = args.GetValue(Of ULong)("--seed")
        Dim wanted = args.GetValue(Of Integer)("--subscribers")
        Dim interval = args.GetValue(Of Integer)("--interval")
        Dim timeout = args.GetValue(Of Integer)("--timeout")
        ' [XPUB] XPUB is a PUB that also hands us every subscription coming from downstream, as a
        ' message: first byte 1 (subscribe) or 0 (unsubscribe), then the topic.
        Using stopSignal As New StopSignal(),
              ticks As New XPublisherSocket(),
              monitor As New SocketMonitor(MonitorOn(args))  ' disposed first: before the sockets close
            Dim deadline As New Deadline(timeout)
            ' [linger] 0: ticks are a stream, nobody is owed those still queued at exit; closing drops them.
            ticks.Options.Linger = TimeSpan.Zero
            ticks.Options.MaxMsgSize = MaxMessage
            monitor.Attach(ticks, "ticks")
            Try
                ticks.Bind(args.GetValue(Of String)("--ticks"))
            Catch problem As Exception When IsEndpointProblem(problem)
                Throw New Failure("bind", $"cannot bind: {problem.Message}")
            End Try
            Emit("ready", ("ticks", ticks.Options.LastEndpoint))

            Dim subscribers As New HashSet(Of String)  ' every @name ever joined
            Dim topics As New HashSet(Of String)  ' the topics we reported and that are still subscribed
            Dim sequence = 0UL  ' every symbol gets one tick per round, so they share the round number
            Dim nextRound As Long? = Nothing  ' on the monotonic millisecond clock, once every subscriber is there
            Do Until stopSignal.Raised
                If deadline.Expired() Then Throw New Failure("timeout", $"still publishing after {timeout} ms")
                Dim waitMs = If(nextRound Is Nothing, 100, Math.Max(0, nextRound.Value - Environment.TickCount64))
                ' [poll] The wait between rounds is this poll of the XPUB, up to the next round and
                ' never past the deadline: subscriptions get handled while we wait. Then a receive that
                ' does not wait (POLLIN is a hint). .NET takes signals on a thread of its own: no EINTR.
                ' One frame at a time, whatever its more flag: NetMQ's XPUB filters only the first frame
                ' of a message from a peer and passes the others on, so each frame is judged alone.
                Dim message = If(PollIn(ticks, deadline.Cap(waitMs)), ReceiveFrameIfReady(ticks), Nothing)
                If message IsNot Nothing Then
                    OnSubscription(message, subscribers, topics)
                    ' [slow joiner] A tick sent before every subscriber's subscriptions arrived would be
                    ' dropped for the late ones: publishing starts once every @name is here, and each
                    ' subscriber subscribes to its symbols before its @name.
                    If nextRound Is Nothing AndAlso subscribers.Count >= wanted Then
                        Emit("started", ("subscribers", subscribers.Count))
                        nextRound = Environment.TickCount64
                    End If
                End If
                If nextRound IsNot Nothing AndAlso Environment.TickCount64 >= nextRound.Value Then
                    sequence += 1UL
                    Dim nowMs = DateTimeOffset.UtcNow.ToUnixTimeMilliseconds()
                    For Each symbol In symbols
                        ' [HWM] XPUB, like PUB, never blocks: a subscriber whose queue is at the high-water
                        ' mark (NetMQ's default, 1000 messages) loses ticks; --interval keeps far below it.
                        ticks.SendMultipartBytes(TickFrames(seed, symbol, sequence, nowMs))
                    Next
                    nextRound += interval
                End If
            Loop
            Emit("done", ("rounds", sequence), ("ticks", sequence * CULng(symbols.Length)))
        End Using
        Return 0
    End Function

    ''' <summary>
    ''' A subscription frame: 1 (subscribe) or 0 (unsubscribe), then the topic. XPUB passes on one
    ''' subscribe per topic, and one unsubscribe when its last subscriber leaves, but only for the first
    ''' frame of a message: `topics` is our own record, so that a repeat is never reported twice.
    ''' </summary>
    Private Sub OnSubscription(message As Byte(), subscribers As HashSet(Of String), topics As HashSet(Of String))
        If message.Length < 2 OrElse message(0) > 1 Then
            Emit("error", ("code", "malformed-subscription"), ("reason", $"not a subscription: {Shown(message, 40)}"))
            Return
        End If
        Dim isOn = message(0) = 1, topicBytes = message.Skip(1).ToArray()
        If topicBytes(0) = AscW("@"c) AndAlso IsName(topicBytes.Skip(1).ToArray()) Then
            Dim name = Utf8.GetString(topicBytes, 1, topicBytes.Length - 1)
            If Not isOn Then
                topics.Remove("@" & name)  ' a subscriber left: nothing to report, it still counts
            ElseIf topics.Add("@" & name) Then
                subscribers.Add(name)
                Emit("joined", ("subscriber", name))
            End If
        ElseIf IsTopic(topicBytes) Then  ' a symbol: A-Z only, so "ibm" or "GOOGLEPLEX" are errors, as is a bad @name
            Dim symbol = Encoding.ASCII.GetString(topicBytes, 0, topicBytes.Length - 1)
            ' Add and Remove say whether the set changed: report only what is news.
            If If(isOn, topics.Add(symbol), topics.Remove(symbol)) Then
                Emit(If(isOn, "subscribed", "unsubscribed"), ("symbol", symbol))
            End If
        Else
            Emit("error", ("code", "malformed-subscription"), ("reason", $"unknown topic {Shown(topicBytes, 40)}"))
        End If
    End Sub

    ' --- proxy -----------------------------------------------------------------------------------

    Private Function RunProxy(args As ParseResult) As Integer
        Dim timeout = args.GetValue(Of Integer)("--timeout")
        ' [proxy] The library's own proxy moves every message both ways: ticks from XSUB to XPUB,
        ' subscriptions from XPUB back to XSUB. NetMQ's Proxy has no steerable control socket: it runs
        ' on a NetMQPoller, the library's loop (as zmq_proxy is libzmq's), and stops when the poller
        ' does. Left to itself, Start() runs a poller of its own and blocks until Stop() from another
        ' thread, but a Stop() that comes before that poller runs is lost or throws. So we run the
        ' poller, and both ways of stopping it happen on its thread: a signal queues poller.Stop as a
        ' task for the poller, which runs it even if the signal came before poller.Run(); the
        ' deadline is a timer on the same poller.
        ' [XSUB] XSUB is a SUB whose subscriptions are messages its owner sends: the proxy passes on
        ' upstream the subscriptions that the downstream XPUB hands it.
        Using upstream As New XSubscriberSocket(),  ' faces the publisher: receives ticks, sends subscriptions
              downstream As New XPublisherSocket(),  ' faces subscribers: sends ticks, receives subscriptions
              monitor As New SocketMonitor(MonitorOn(args)),  ' disposed before the sockets close
              poller As New NetMQPoller(),
              stopSignal As New StopSignal(
                  Sub() Task.Factory.StartNew(AddressOf poller.Stop, CancellationToken.None, TaskCreationOptions.None, poller))
            ' [linger] 0: the proxy owes nobody the ticks still queued when it stops.
            upstream.Options.Linger = TimeSpan.Zero
            downstream.Options.Linger = TimeSpan.Zero
            upstream.Options.MaxMsgSize = MaxMessage  ' ticks from the publisher
            downstream.Options.MaxMsgSize = MaxMessage  ' subscriptions from the subscribers
            ' [HWM] Subscriptions go upstream once per topic (XPUB passes on only the first): one dropped
            ' at the send high-water mark during a flood would be lost for good. No limit on XSUB's sends.
            upstream.Options.SendHighWatermark = 0
            monitor.Attach(upstream, "upstream")
            monitor.Attach(downstream, "downstream")
            Try
                downstream.Bind(args.GetValue(Of String)("--downstream"))
                upstream.Connect(args.GetValue(Of String)("--upstream"))
            Catch problem As Exception When IsEndpointProblem(problem)
                Throw New Failure("bind", $"cannot bind or connect: {problem.Message}")
            End Try
            Emit("ready", ("downstream", downstream.Options.LastEndpoint))

            poller.Add(upstream)
            poller.Add(downstream)
            Dim forwarder As New Proxy(upstream, downstream, poller:=poller)
            forwarder.Start()  ' with our poller, this only hooks the forwarding up
            Dim timedOut = False
            If timeout > 0 Then
                Dim timer As New NetMQTimer(timeout)  ' fires on the poller's thread
                AddHandler timer.Elapsed,
                    Sub(sender, e)
                        timedOut = True
                        poller.Stop()
                    End Sub
                poller.Add(timer)
            End If
            poller.Run()  ' until a signal or the timer stops it
            If timedOut Then Throw New Failure("timeout", $"still proxying after {timeout} ms")
        End Using
        Emit("done")
        Return 0
    End Function

    ' --- subscriber ------------------------------------------------------------------------------

    Public Structure Tick
        Public Symbol As String
        Public Sequence As ULong
        Public Timestamp As Long
        Public Price As Double
    End Structure

    ''' <summary>The first broken rule of a tick as (code, reason), or Nothing when it is good: then `tick` holds it.</summary>
    Public Function CheckTick(frames As List(Of Byte()), subscribed As List(Of String), seed As ULong,
                              ByRef tick As Tick) As (Code As String, Reason As String)?
        ' [multipart] A tick arrives whole or not at all; its frame count is checked, never assumed.
        If frames.Count <> 4 Then Return ("malformed-tick", $"expected 4 frames, got {frames.Count}")
        Dim nameBytes = frames(0)
        If Not IsTopic(nameBytes) Then
            Return ("malformed-tick", $"frame 0 is not a symbol and a NUL: {Shown(nameBytes, 12)}")
        End If
        If frames.Skip(1).Any(Function(frame) frame.Length <> 8) Then
            Return ("malformed-tick", $"frames 1-3 have [{String.Join(", ", frames.Skip(1).Select(Function(f) f.Length))}] bytes, not 8 each")
        End If
        Dim sequence = BinaryPrimitives.ReadUInt64BigEndian(frames(1))
        ' 2^63 or more: past what every language's JSON numbers carry alike, and no publisher gets there.
        If sequence > Long.MaxValue Then Return ("malformed-tick", $"sequence {sequence} is 2^63 or more")
        Dim name = Encoding.ASCII.GetString(nameBytes, 0, nameBytes.Length - 1)
        If Not subscribed.Contains(name) Then Return ("unexpected-symbol", $"{name} is not subscribed")
        Dim timestamp = BinaryPrimitives.ReadInt64BigEndian(frames(2))
        Dim expected = TickFrames(seed, name, sequence, timestamp)(3)
        If Not frames(3).SequenceEqual(expected) Then
            Return ("wrong-price", $"{name} #{sequence}: price bytes {Convert.ToHexStringLower(frames(3))}, expected {Convert.ToHexStringLower(expected)}")
        End If
        tick = New Tick With {.Symbol = name, .Sequence = sequence, .Timestamp = timestamp,
                              .Price = BinaryPrimitives.ReadDoubleBigEndian(frames(3))}
        Return Nothing
    End Function

    Private Function RunSubscriber(args As ParseResult) As Integer
        Dim name = args.GetValue(Of String)("--name")
        Dim count = args.GetValue(Of Integer)("--count")
        Dim seed = args.GetValue(Of ULong)("--seed")
        Dim switch = args.GetValue(Of (Old As String, [New] As String)?)("--switch")
        Dim switchAfter = args.GetValue(Of Integer)("--switch-after")
        Dim timeout = args.GetValue(Of Integer)("--timeout")
        Dim subscribed = args.GetValue(Of String())("--symbols").ToList()
        If switch IsNot Nothing AndAlso (Not subscribed.Contains(switch.Value.Old) OrElse subscribed.Contains(switch.Value.New)) Then
            Throw New Usage("--switch OLD:NEW needs OLD among --symbols and NEW not")
        End If
        Dim deadline As New Deadline(timeout)
        Using ticks As New SubscriberSocket(),
              monitor As New SocketMonitor(MonitorOn(args))  ' disposed first: before the sockets close
            ticks.Options.Linger = TimeSpan.Zero
            ticks.Options.MaxMsgSize = MaxMessage
            monitor.Attach(ticks, "ticks")
            Try
                ticks.Connect(args.GetValue(Of String)("--ticks"))
            Catch problem As Exception When IsEndpointProblem(problem)
                Throw New Failure("connect", $"cannot connect: {problem.Message}")
            End Try
            ' [SUB] SUB delivers only the ticks whose frame 0 starts with one of its subscriptions: the
            ' topic's NUL keeps GOOG from matching GOOGL. It connects first and then subscribes, so the
            ' subscriptions go out in the order made (made before a connect, they would go out sorted).
            For Each symbol In subscribed
                ticks.Subscribe(Topic(symbol))
            Next
            ' Last, our own topic: the publisher waits for it, and by then our symbols are in place.
            ticks.Subscribe(Utf8.GetBytes("@" & name))
            Emit("ready", ("name", name), ("symbols", subscribed))

            Dim received = subscribed.ToDictionary(Function(symbol) symbol, Function(symbol) 0)
            Dim last As New Dictionary(Of String, ULong)()  ' each symbol's last sequence: a jump is a gap, reported as such
            Dim switched = switch Is Nothing
            Dim total = 0, malformed = 0
            Do Until switched AndAlso subscribed.All(Function(symbol) received(symbol) >= count)
                ' Checked on every turn, not only when the receive times out: a stream of ticks that count
                ' for nothing (bad ones, or more of a symbol already done) must not keep us past it.
                If deadline.Expired() Then
                    Dim missing = String.Join(", ", received.Where(Function(entry) entry.Value < count).Select(Function(entry) $"{entry.Key}: {entry.Value}"))
                    Throw New Failure("timeout", $"not done after {timeout} ms; ticks so far: {missing}")
                End If
                ' No timer here: a second at most, so that the deadline is looked at even in silence.
                Dim frames = If(PollIn(ticks, deadline.Cap(1000)), ReceiveIfReady(ticks), Nothing)
                If frames Is Nothing Then Continue Do
                Dim tick As New Tick()
                Dim problem = CheckTick(frames, subscribed, seed, tick)
                If problem IsNot Nothing Then
                    malformed += 1
                    Emit("error", ("code", problem.Value.Code), ("reason", problem.Value.Reason))
                    Continue Do
                End If
                total += 1
                received(tick.Symbol) += 1
                ' PUB/SUB drops silently: ticks published while the path to us was down (a proxy that
                ' restarted) or while a queue was full (the HWM) are gone. Say so, never hide it.
                Dim previous As ULong = 0
                If last.TryGetValue(tick.Symbol, previous) AndAlso tick.Sequence > previous + 1UL Then
                    Emit("gap", ("symbol", tick.Symbol), ("after", previous), ("next", tick.Sequence))
                End If
                last(tick.Symbol) = tick.Sequence
                Emit("tick", ("symbol", tick.Symbol), ("sequence", tick.Sequence), ("timestamp", tick.Timestamp), ("price", tick.Price))
                If switch IsNot Nothing AndAlso tick.Symbol = switch.Value.Old AndAlso received(tick.Symbol) = switchAfter Then
                    Dim old = switch.Value.Old, [new] = switch.Value.New
                    ' The SUB socket filters by its current subscriptions as it delivers: no tick of OLD
                    ' comes after this, even one already queued.
                    ticks.Unsubscribe(Topic(old))
                    subscribed.Remove(old)
                    Emit("unsubscribed", ("symbol", old))
                    ticks.Subscribe(Topic([new]))
                    subscribed.Add([new])
                    received.TryAdd([new], 0)
                    Emit("subscribed", ("symbol", [new]))
                    switched = True
                End If
            Loop
            Emit("done", ("ticks", total), ("malformed", malformed))
        End Using
        Return 0
    End Function
End Module
