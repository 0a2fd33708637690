' query: a key-value engine and its facades over RFC 12/CHP (examples/query/PROTOCOL.md).
' The engine combines three patterns on three sockets: ROUTER answers snapshot requests, XPUB
' publishes updates, SUB collects writes; a fourth socket, SUB, takes ticks from example 2's
' publisher. A facade asks for snapshots on a DEALER, follows updates on a SUB and writes on an XPUB.
Imports System.Buffers.Binary
Imports System.CommandLine
Imports System.CommandLine.Parsing
Imports System.Security.Cryptography
Imports System.Text
Imports System.Text.RegularExpressions
Imports NetMQ
Imports NetMQ.Sockets

Public Module Query
    ' [max size] MaxMsgSize on every socket, set before bind or connect: the largest legal frame is a
    ' 256-byte value; between 257 and 1024 bytes it reaches us and is reported, above that NetMQ
    ' drops it with the connection that sent it.
    Friend Const MaxMessage = 1024
    Private Const MaxValue = 256
    Private Const MaxFrames = 7  ' frames kept of a message (5, a routing id, one to tell "more"); the rest are dropped
    Private Const MaxQuote = 32  ' bytes of a peer's data that a reason may quote
    ' Keys, subtrees and properties are bytes: matched as Latin-1 text, one character per byte.
    Private ReadOnly KeyPattern As New Regex("\A(/[A-Za-z0-9._-]+)+\z")
    Private ReadOnly SubtreePattern As New Regex("\A(/[A-Za-z0-9._-]+)+/\z")
    Private ReadOnly PropertiesPattern As New Regex("\A(([A-Za-z0-9_-]{1,32})=([\x20-\x7e]*)\n)*\z")
    Private ReadOnly NamePattern As New Regex("\A[A-Za-z0-9_-]{1,32}\z")
    Private ReadOnly NoBytes As Byte() = Array.Empty(Of Byte)()
    Private ReadOnly HugzWord As Byte() = Encoding.ASCII.GetBytes("HUGZ")
    Private ReadOnly IcanhazWord As Byte() = Encoding.ASCII.GetBytes("ICANHAZ?")
    Private ReadOnly KthxbaiWord As Byte() = Encoding.ASCII.GetBytes("KTHXBAI")

    Public Function Roles() As Command
        Dim engine As New Command("engine", "keep the map, serve snapshots, publish updates") From {
            Endpoint("--snapshot", "tcp://127.0.0.1:5556"),
            Endpoint("--updates", "tcp://127.0.0.1:5557"),
            Endpoint("--collector", "tcp://127.0.0.1:5558"),
            Endpoint("--ticks", ""),
            NameOption("--name", "engine"),
            SymbolsOption("--symbols", "AAPL,GOOG,GOOGL,MSFT,IBM"),
            AtLeast("--hugz", 1, defaultValue:=1000),
            AtLeast("--max-keys", 1, defaultValue:=10000),
            AtLeast("--timeout", 0, defaultValue:=0),
            MonitorOption()}
        engine.SetAction(AddressOf RunEngine)

        Dim facade As New Command("facade", "mirror some subtrees of the engine's map, and write to it") From {
            Endpoint("--snapshot", "tcp://127.0.0.1:5556"),
            Endpoint("--updates", "tcp://127.0.0.1:5557"),
            Endpoint("--collector", "tcp://127.0.0.1:5558"),
            SegmentOption("--name"),
            SubtreesOption("--subtrees"),
            AtLeast("--count", 1, defaultValue:=100),
            AtLeast("--writes", 0, defaultValue:=0),
            AtLeast("--ttl", 1, defaultValue:=1, maximum:=86400),
            AtLeast("--silence", 1, defaultValue:=3000),
            AtLeast("--timeout", 0, defaultValue:=30000),
            MonitorOption()}
        facade.SetAction(AddressOf RunFacade)

        Dim derive As New Command("derive", "print the KVPUBs some ticks make (the test vectors)") From {
            New [Option](Of String)("--symbol") With {.Required = True, .CustomParser = Function(r) CheckSymbol(r.Tokens.Single().Value, r)},
            New [Option](Of Byte()())("--prices") With {.Required = True, .Arity = ArgumentArity.ExactlyOne, .CustomParser = AddressOf ParsePrices},
            UInt64Option("--sequence", 0)}
        derive.SetAction(AddressOf RunDerive)

        Return New Command("query", "a key-value engine and its facades over RFC 12/CHP") From {engine, facade, derive}
    End Function

    ''' <summary>A facade's name is a key segment: 1 to 32 of A-Z a-z 0-9 _ -.</summary>
    Friend Function SegmentOption(name As String) As [Option](Of String)
        Dim opt As New [Option](Of String)(name) With {.Required = True}
        opt.Validators.Add(
            Sub(result)
                If Not NamePattern.IsMatch(If(result.GetValueOrDefault(Of String)(), "")) Then
                    result.AddError($"{name} takes 1 to 32 of A-Z a-z 0-9 _ -")
                End If
            End Sub)
        Return opt
    End Function

    ''' <summary>Comma-separated subtrees, none twice; `all` is the empty subtree, the whole map.
    ''' Required unless there is a default (the desk's).</summary>
    Friend Function SubtreesOption(name As String, Optional defaultValue As String = Nothing) As [Option](Of String())
        Dim parse =
            Function(text As String, result As ArgumentResult) As String()
                Dim parts = text.Split(","c)
                For Each part In parts.Where(Function(p) p <> "all" AndAlso (p = "" OrElse Not IsSubtree(p)))
                    result.AddError($"'{part}' is not a subtree like /prices/ (or all)")
                Next
                Dim trees = parts.Select(Function(part) If(part = "all", "", part)).ToArray()
                If trees.Distinct().Count() <> trees.Length Then result.AddError("a subtree is listed twice")
                Return trees
            End Function
        Dim opt As New [Option](Of String())(name) With {
            .Required = defaultValue Is Nothing,
            .Arity = ArgumentArity.ExactlyOne,
            .CustomParser = Function(result) parse(result.Tokens.Single().Value, result)}
        If defaultValue IsNot Nothing Then opt.DefaultValueFactory = Function(result) parse(defaultValue, result)
        Return opt
    End Function

    Private Function ParsePrices(result As ArgumentResult) As Byte()()
        Try
            Dim prices = result.Tokens.Single().Value.Split(","c).Select(Function(part) Convert.FromHexString(part)).ToArray()
            If prices.All(Function(price) price.Length = 8) Then Return prices
        Catch problem As FormatException
        End Try
        result.AddError("--prices takes 8-byte binary64 values in hex, separated by ','")
        Return Nothing
    End Function

    ' --- the protocol's pieces -----------------------------------------------------------------

    Friend Function Latin1(data As Byte()) As String
        Return Encoding.Latin1.GetString(data)
    End Function

    Friend Function IsKey(data As Byte()) As Boolean
        Return data.Length >= 2 AndAlso data.Length <= 255 AndAlso KeyPattern.IsMatch(Latin1(data))
    End Function

    Private Function IsSubtree(text As String) As Boolean
        Return text = "" OrElse (text.Length <= 255 AndAlso SubtreePattern.IsMatch(text))
    End Function

    Private Function Matches(frame As Byte(), word As Byte()) As Boolean
        Return frame.AsSpan().SequenceEqual(word)
    End Function

    Friend Function HexOf(data As Byte()) As String
        Return Convert.ToHexStringLower(data)
    End Function

    Private Sub Report(code As String, reason As String)
        Emit("error", ("code", code), ("reason", reason))
    End Sub

    ''' <summary>A message's frames for people, quoting at most MaxQuote bytes of them in all.</summary>
    Private Function Quote(frames As IEnumerable(Of Byte())) As String
        Dim left = MaxQuote, parts As New List(Of String)
        For Each frame In frames
            parts.Add($"'{Shown(frame, left)}'")
            left -= Math.Min(left, frame.Length)
        Next
        Return $"[{String.Join(", ", parts)}]"
    End Function

    ''' <summary>The `ttl` property in seconds, 0 for none, or Nothing when the properties are not
    ''' `name=value\n` lines or hold a ttl that is not one decimal number of 1 to 86400.</summary>
    Private Function TtlOf(data As Byte()) As Integer?
        If data.Length > 255 Then Return Nothing
        Dim found = PropertiesPattern.Match(Latin1(data))
        If Not found.Success Then Return Nothing
        Dim names = found.Groups(2).Captures, values = found.Groups(3).Captures
        Dim ttls = Enumerable.Range(0, names.Count).Where(Function(i) names(i).Value = "ttl").Select(Function(i) values(i).Value).ToList()
        If ttls.Count = 0 Then Return 0
        If ttls.Count > 1 OrElse Not Regex.IsMatch(ttls(0), "\A[1-9][0-9]{0,4}\z") OrElse CInt(ttls(0)) > 86400 Then Return Nothing
        Return CInt(ttls(0))
    End Function

    ''' <summary>Why a KVSYNC, KVPUB or KVSET (5 frames) is malformed, or Nothing.</summary>
    Private Function CheckKv(frames As List(Of Byte())) As String
        ' [multipart] A command arrives whole or not at all (ReceiveMessage keeps at most MaxFrames of
        ' its frames); its frame count is checked, never assumed.
        If frames.Count <> 5 Then Return $"expected 5 frames, got {frames.Count}{If(frames.Count = MaxFrames, " or more", "")}"
        If Not IsKey(frames(0)) Then Return $"not a key: '{Shown(frames(0), MaxQuote)}'"
        If frames(1).Length <> 8 Then Return $"a sequence of {frames(1).Length} bytes, not 8"
        If frames(2).Length <> 0 AndAlso frames(2).Length <> 16 Then Return $"a UUID of {frames(2).Length} bytes, not 0 or 16"
        If TtlOf(frames(3)) Is Nothing Then
            Return $"properties that are not name=value lines with at most one ttl of 1 to 86400: '{Shown(frames(3), MaxQuote)}'"
        End If
        If frames(4).Length > MaxValue Then Return $"a value of {frames(4).Length} bytes, more than {MaxValue}"
        Return Nothing
    End Function

    Private Function Seq(number As ULong) As Byte()
        Dim frame = New Byte(7) {}
        BinaryPrimitives.WriteUInt64BigEndian(frame, number)  ' 8 bytes, big-endian (network order)
        Return frame
    End Function

    ''' <summary>
    ''' The next message, read frame by frame without waiting: at most MaxFrames frames are kept
    ''' (the rest are read and dropped), so no message can make us allocate without bound. Nothing if
    ''' there was nothing after all: a poll's "ready" is a hint, not a promise.
    ''' </summary>
    Friend Function ReceiveMessage(socket As NetMQSocket) As List(Of Byte())
        Dim frame As Byte() = Nothing, more As Boolean
        If Not socket.TryReceiveFrameBytes(TimeSpan.Zero, frame, more) Then Return Nothing
        Dim frames As New List(Of Byte()) From {frame}
        Do While more  ' the other frames of a message arrive with its first one
            frame = socket.ReceiveFrameBytes(more)
            If frames.Count < MaxFrames Then frames.Add(frame)
        Loop
        Return frames
    End Function

    ''' <summary>Wait for one socket at most `timeout`, then receive without waiting; Nothing if nothing came.</summary>
    Private Function ReceiveWithin(socket As NetMQSocket, timeout As TimeSpan) As List(Of Byte())
        Return If(PollIn(socket, timeout), ReceiveMessage(socket), Nothing)
    End Function

    ' --- the map fed by ticks ------------------------------------------------------------------

    ''' <summary>floor(price × 100 + 0.5): two binary64 operations (.NET never fuses them into one
    ''' FMA) and an exact floor; Nothing if the price cannot be cents.</summary>
    Public Function TickCents(price As Double) As Long?
        If Not Double.IsFinite(price) OrElse price < 0 OrElse price > 1000000000.0 Then Return Nothing
        Return CLng(Math.Floor(price * 100.0 + 0.5))
    End Function

    Private Function DecimalText(cents As Long) As Byte()
        Return Encoding.ASCII.GetBytes($"{cents \ 100}.{cents Mod 100:00}")
    End Function

    ''' <summary>The four derived keys of one tick and their new values; `stats` keeps, per symbol,
    ''' the highest and lowest price in cents and the number of ticks.</summary>
    Private Function Derived(stats As Dictionary(Of String, (High As Long, Low As Long, Count As Long)),
                             symbol As String, cents As Long) As (Key As String, Value As Byte())()
        Dim s As (High As Long, Low As Long, Count As Long) = Nothing
        If Not stats.TryGetValue(symbol, s) Then s = (cents, cents, 0)
        s = (Math.Max(s.High, cents), Math.Min(s.Low, cents), s.Count + 1)
        stats(symbol) = s
        Return {($"/prices/{symbol}", DecimalText(cents)),
                ($"/stats/{symbol}/high", DecimalText(s.High)),
                ($"/stats/{symbol}/low", DecimalText(s.Low)),
                ($"/stats/{symbol}/ticks", Encoding.ASCII.GetBytes(s.Count.ToString()))}
    End Function

    Private Function RunDerive(args As ParseResult) As Integer
        Dim symbol = args.GetValue(Of String)("--symbol")
        Dim sequence = args.GetValue(Of ULong)("--sequence")
        Dim values As New Dictionary(Of String, Byte())
        Dim stats As New Dictionary(Of String, (High As Long, Low As Long, Count As Long))
        For Each price In args.GetValue(Of Byte()())("--prices")
            Dim cents = TickCents(BinaryPrimitives.ReadDoubleBigEndian(price))
            If cents Is Nothing Then Throw New Failure("malformed-tick", $"price {HexOf(price)} cannot be cents")
            For Each derivedKey In Derived(stats, symbol, cents.Value)
                Dim current As Byte() = Nothing
                If values.TryGetValue(derivedKey.Key, current) AndAlso Matches(current, derivedKey.Value) Then Continue For
                values(derivedKey.Key) = derivedKey.Value  ' only what changes is an update
                sequence += 1UL
                Dim frames = {Utf8.GetBytes(derivedKey.Key), Seq(sequence), NoBytes, NoBytes, derivedKey.Value}
                Emit("encoded", ("frames", frames.Select(AddressOf HexOf).ToList()))
            Next
        Next
        Emit("done")
        Return 0
    End Function

    ' --- engine --------------------------------------------------------------------------------

    ''' <summary>The map (key -> value and sequence), its expiries and its sockets' replies.</summary>
    Private NotInheritable Class Engine
        Private ReadOnly _snapshots As RouterSocket
        Private ReadOnly _updates As XPublisherSocket
        Private ReadOnly _maxKeys As Integer
        Public ReadOnly Map As New Dictionary(Of String, (Value As Byte(), Sequence As ULong))
        Private ReadOnly _expiries As New Dictionary(Of String, Long)  ' key -> when, monotonic ms
        Private ReadOnly _stats As New Dictionary(Of String, (High As Long, Low As Long, Count As Long))
        Public Sequence As ULong
        Public Served, Abandoned As Integer
        Public LastHugz As Long = Environment.TickCount64  ' the HUGZ period counts from the last one sent
        Private ReadOnly _uuid As Byte() = RandomNumberGenerator.GetBytes(16)  ' who we are: an engine started again draws another

        Public Sub New(snapshots As RouterSocket, updates As XPublisherSocket, maxKeys As Integer)
            _snapshots = snapshots
            _updates = updates
            _maxKeys = maxKeys
        End Sub

        ''' <summary>One update: the next sequence, the map, the KVPUB to every subscriber, the event.</summary>
        Private Sub Update(key As String, value As Byte(), cause As String, Optional uuid As Byte() = Nothing, Optional props As Byte() = Nothing)
            Sequence += 1UL
            If value.Length > 0 Then Map(key) = (value, Sequence) Else Map.Remove(key)
            _expiries.Remove(key)
            ' [HWM] XPUB never blocks: a subscriber whose queue is at the high-water mark (NetMQ's
            ' default, 1000 messages) loses the update, and notices only by the sequence.
            _updates.SendMultipartBytes(Utf8.GetBytes(key), Seq(Sequence), If(uuid, NoBytes), If(props, NoBytes), value)
            Emit("update", ("sequence", Sequence), ("key", key), ("value", HexOf(value)), ("cause", cause))
        End Sub

        Public Sub Hugz()
            ' The RFC's HUGZ carries 0 and no UUID; ours our sequence (as the Guide's clonesrv) and our
            ' UUID, so that a facade knows when the engine it hears is not the one it synced with.
            _updates.SendMultipartBytes(HugzWord, Seq(Sequence), _uuid, NoBytes, NoBytes)
            LastHugz = Environment.TickCount64
        End Sub

        Public Sub OnIcanhaz(frames As List(Of Byte()))
            If frames.Count <> 3 OrElse Not Matches(frames(1), IcanhazWord) OrElse Not IsSubtree(Latin1(frames(2))) Then
                Report("malformed-icanhaz", $"not [ICANHAZ?, subtree]: {Quote(frames.Skip(1).Take(3))}")
                Return
            End If
            Dim identity = frames(0), subtree = Latin1(frames(2))
            Dim keys = Map.Keys.Where(Function(key) key.StartsWith(subtree, StringComparison.Ordinal)).Order(StringComparer.Ordinal).ToList()
            For sent = 0 To keys.Count - 1
                Dim entry = Map(keys(sent))
                Dim why = SendTo(identity, Utf8.GetBytes(keys(sent)), Seq(entry.Sequence), NoBytes, NoBytes, entry.Value)
                If why IsNot Nothing Then
                    Abandon(subtree, sent, why)
                    Return
                End If
            Next
            Dim highest = keys.Select(Function(key) Map(key).Sequence).DefaultIfEmpty(0UL).Max()
            Dim failed = SendTo(identity, KthxbaiWord, Seq(highest), NoBytes, NoBytes, frames(2))
            If failed IsNot Nothing Then
                Abandon(subtree, keys.Count, failed)
                Return
            End If
            Served += 1
            Emit("snapshot", ("subtree", subtree), ("keys", keys.Count), ("sequence", highest), ("at", Sequence))
        End Sub

        ''' <summary>
        ''' Send to one peer through ROUTER, without waiting: ROUTER takes the routing id in front off
        ''' and picks that peer's queue by it. With ROUTER_MANDATORY that first frame fails when the peer
        ''' is gone (NetMQ throws) or its queue is full (the try fails); Nothing when the message went out.
        ''' </summary>
        Private Function SendTo(identity As Byte(), ParamArray frames As Byte()()) As String
            Try
                If Not _snapshots.TrySendMultipartBytes(TimeSpan.Zero, {identity}.Concat(frames)) Then Return "full"
            Catch problem As HostUnreachableException
                Return "gone"
            End Try
            Return Nothing
        End Function

        Private Sub Abandon(subtree As String, sent As Integer, why As String)
            Abandoned += 1
            Emit("abandoned", ("subtree", subtree), ("keys", sent), ("why", why))
        End Sub

        Public Sub OnKvset(frames As List(Of Byte()))
            Dim problem = CheckKv(frames)
            If problem IsNot Nothing Then
                Report("malformed-kvset", problem)
                Return
            End If
            Dim key = Latin1(frames(0)), value = frames(4)
            If value.Length > 0 AndAlso Not Map.ContainsKey(key) AndAlso Map.Count >= _maxKeys Then
                Report("map-full", $"'{Shown(frames(0), MaxQuote)}' would be key {CLng(_maxKeys) + 1}")
                Return
            End If
            Update(key, value, "kvset", frames(2), frames(3))
            Dim ttl = TtlOf(frames(3)).Value
            If ttl > 0 AndAlso value.Length > 0 Then _expiries(key) = Environment.TickCount64 + ttl * 1000L
        End Sub

        Public Sub OnTick(frames As List(Of Byte()), symbols As String())
            ' A tick as examples/ticker/PROTOCOL.md has it: [symbol NUL, sequence, timestamp, price].
            If frames.Count <> 4 OrElse Not IsTopic(frames(0)) OrElse frames.Skip(1).Any(Function(frame) frame.Length <> 8) Then
                Report("malformed-tick", $"not a tick: {Quote(frames)}")
                Return
            End If
            Dim symbol = Latin1(frames(0)).TrimEnd(ChrW(0))
            Dim cents = TickCents(BinaryPrimitives.ReadDoubleBigEndian(frames(3)))
            If Not symbols.Contains(symbol) OrElse cents Is Nothing Then
                Report("malformed-tick", $"{symbol}: not subscribed, or price {HexOf(frames(3))} cannot be cents")
                Return
            End If
            For Each derivedKey In Derived(_stats, symbol, cents.Value)
                Dim current As (Value As Byte(), Sequence As ULong) = Nothing
                If Not Map.TryGetValue(derivedKey.Key, current) OrElse Not Matches(current.Value, derivedKey.Value) Then
                    Update(derivedKey.Key, derivedKey.Value, "tick")
                End If
            Next
        End Sub

        Public Sub OnSubscription(frame As Byte())
            If frame.Length = 0 OrElse frame(0) > 1 Then
                Report("malformed-subscription", $"not a subscription: '{Shown(frame, MaxQuote)}'")
            ElseIf frame(0) = 1 AndAlso HugzWord.AsSpan().StartsWith(frame.AsSpan(1)) Then
                Hugz()  ' a new subscriber learns at once that its subscriptions are in place
            End If
        End Sub

        ''' <summary>Delete every key whose time has come, in order of expiry time, then key.</summary>
        Public Sub Expire(now As Long)
            Dim due = _expiries.Where(Function(entry) entry.Value <= now).
                OrderBy(Function(entry) entry.Value).ThenBy(Function(entry) entry.Key, StringComparer.Ordinal).
                Select(Function(entry) entry.Key).ToList()
            For Each key In due
                Update(key, NoBytes, "expired")
            Next
        End Sub

        ''' <summary>Milliseconds to the next HUGZ or expiry.</summary>
        Public Function NextTimer(hugzMs As Integer) As Long
            Dim due = _expiries.Values.Append(LastHugz + hugzMs).Min()
            Return Math.Max(0, due - Environment.TickCount64)
        End Function
    End Class

    Private Function RunEngine(args As ParseResult) As Integer
        Dim timeout = args.GetValue(Of Integer)("--timeout")
        Dim hugz = args.GetValue(Of Integer)("--hugz")
        Dim symbols = args.GetValue(Of String())("--symbols")
        Dim ticksEndpoint = args.GetValue(Of String)("--ticks")
        Dim deadline As New Deadline(timeout)
        Using stopSignal As New StopSignal(),
              snapshots As New RouterSocket(),
              updates As New XPublisherSocket(),
              collector As New SubscriberSocket(),  ' the facades' writes
              ticks = If(ticksEndpoint = "", Nothing, New SubscriberSocket()),
              monitor As New SocketMonitor(MonitorOn(args))  ' disposed first: before the sockets close
            ' [ROUTER] ROUTER: every request arrives with the routing id of its peer in front, and every
            ' reply is routed by the routing id we put in front. What it cannot route it drops in
            ' silence; MANDATORY makes it fail instead, so that a snapshot is never sent with holes.
            snapshots.Options.RouterMandatory = True
            ' [HWM] Room for a whole snapshot per peer: the library learns that a peer has read its
            ' messages only in batches, so a loop of sends would find 1000 (the default high-water
            ' mark) "full"; at the mark a ROUTER send fails (MANDATORY) and the snapshot is abandoned.
            snapshots.Options.SendHighWatermark = Math.Min(args.GetValue(Of Integer)("--max-keys"), Integer.MaxValue - 1) + 1
            ' [XPUB] XPUB, verbose: a PUB on the wire that hands us every subscription as a message (first
            ' byte 1 or 0, then the topic), repeated ones too, so that each subscription to HUGZ is answered.
            updates.Options.XPubVerbose = True
            ' [SUB] The collector is subscribed to "" before it binds: every write, whatever its key.
            collector.Subscribe("")
            Dim sockets = New NetMQSocket() {snapshots, updates, collector, ticks}.Where(Function(socket) socket IsNot Nothing).ToArray()
            ' [linger] 0 on every socket: the engine stops only when told to, and closing drops what is
            ' still queued for facades (a snapshot, an update) instead of waiting for them.
            For Each socket In sockets
                socket.Options.Linger = TimeSpan.Zero
                socket.Options.MaxMsgSize = MaxMessage
            Next
            monitor.Attach(snapshots, "snapshot")
            monitor.Attach(updates, "updates")
            monitor.Attach(collector, "collector")
            If ticks IsNot Nothing Then monitor.Attach(ticks, "ticks")
            Try
                snapshots.Bind(args.GetValue(Of String)("--snapshot"))
                updates.Bind(args.GetValue(Of String)("--updates"))
                collector.Bind(args.GetValue(Of String)("--collector"))
            Catch problem As Exception When IsEndpointProblem(problem)
                Throw New Failure("bind", $"cannot bind: {problem.Message}")
            End Try
            If ticks IsNot Nothing Then
                Try
                    ticks.Connect(ticksEndpoint)
                Catch problem As Exception When IsEndpointProblem(problem)
                    Throw New Failure("connect", $"cannot connect to {ticksEndpoint}: {problem.Message}")
                End Try
                ' Connected first, then the symbols and last the @name the publisher counts: made before
                ' a connect, subscriptions go out sorted by bytes, and "@" sorts before every symbol.
                For Each symbol In symbols
                    ticks.Subscribe(Topic(symbol))
                Next
                ticks.Subscribe(Utf8.GetBytes("@" & args.GetValue(Of String)("--name")))
            End If
            Emit("ready", ("snapshot", snapshots.Options.LastEndpoint), ("updates", updates.Options.LastEndpoint),
                 ("collector", collector.Options.LastEndpoint))

            Dim engine As New Engine(snapshots, updates, args.GetValue(Of Integer)("--max-keys"))
            Dim frames As List(Of Byte())
            Do Until stopSignal.Raised
                If deadline.Expired() Then Throw New Failure("timeout", $"still serving after {timeout} ms")
                ' [poll] One poll for every socket, up to the next timer (a HUGZ or an expiry), but a
                ' tenth of a second at most so that the stop flag is looked at, and never past the
                ' deadline. .NET takes signals on a thread of its own: no poll is interrupted (EINTR).
                Dim ready = PollIn(sockets, deadline.Cap(Math.Min(engine.NextTimer(hugz), 100)))
                ' One message from each socket that has one, each received without waiting (POLLIN is a
                ' hint): a flood on one cannot starve the others. In the order of the protocol's step 2.
                frames = If(ready.Contains(snapshots), ReceiveMessage(snapshots), Nothing)
                If frames IsNot Nothing Then engine.OnIcanhaz(frames)
                frames = If(ready.Contains(collector), ReceiveMessage(collector), Nothing)
                If frames IsNot Nothing Then engine.OnKvset(frames)
                frames = If(ticks IsNot Nothing AndAlso ready.Contains(ticks), ReceiveMessage(ticks), Nothing)
                If frames IsNot Nothing Then engine.OnTick(frames, symbols)
                ' Subscriptions one frame at a time, whatever its more flag: NetMQ's XPUB filters only
                ' the first frame of a message from a peer and passes the others on.
                Dim frame = If(ready.Contains(updates), ReceiveFrameIfReady(updates), Nothing)
                If frame IsNot Nothing Then engine.OnSubscription(frame)
                Dim now = Environment.TickCount64
                engine.Expire(now)
                ' Every --hugz ms, busy or not: a facade that hears nothing knows we are gone.
                If now - engine.LastHugz >= hugz Then engine.Hugz()
            Loop
            Emit("done", ("sequence", engine.Sequence), ("keys", engine.Map.Count), ("snapshots", engine.Served), ("abandoned", engine.Abandoned))
        End Using
        Return 0
    End Function

    ' --- facade --------------------------------------------------------------------------------
    ' The pieces below are the facade's steps; the desk's query agent (Desk.vb) takes them too.

    ''' <summary>Subscribe to every subtree, then to HUGZ: last, so that once a HUGZ arrives every
    ''' subscription before it is in place at the engine (subscriptions travel in order). After the
    ''' SUB connects: made before, they would go out sorted by bytes, HUGZ before the subtrees.</summary>
    Friend Sub SubscribeUpdates(updates As SubscriberSocket, subtrees As String())
        For Each tree In subtrees
            updates.Subscribe(Encoding.ASCII.GetBytes(tree))
        Next
        updates.Subscribe(HugzWord)
    End Sub

    Friend Function IsHugz(frames As List(Of Byte())) As Boolean
        Return Matches(frames(0), HugzWord)
    End Function

    ''' <summary>Every subtree's snapshot request at once, all in flight on the one DEALER.</summary>
    Friend Sub AskSnapshots(snapshot As DealerSocket, subtrees As String())
        For Each tree In subtrees
            snapshot.SendMultipartBytes(IcanhazWord, Encoding.ASCII.GetBytes(tree))
        Next
    End Sub

    ''' <summary>The collector's subscription to everything ("", a frame 0x01) seen on our XPUB: from now on it hears us.</summary>
    Friend Function IsSubscribeAll(frame As Byte()) As Boolean
        Return Matches(frame, New Byte() {1})
    End Function

    ''' <summary>A KVSET: the key, sequence 0 (the engine numbers it), no UUID, a ttl property or none, the value (empty: delete).</summary>
    Friend Function KvsetFrames(key As String, value As Byte(), ttl As Integer) As Byte()()
        Dim props = If(ttl > 0, Encoding.ASCII.GetBytes($"ttl={ttl}" & vbLf), NoBytes)
        Return {Encoding.ASCII.GetBytes(key), Seq(0), NoBytes, props, value}
    End Function

    ''' <summary>The facade's map and what it still waits for. It reports through `emit`: Emit for the
    ''' facade role, the pipe for the desk's query agent.</summary>
    Friend NotInheritable Class Facade
        Public ReadOnly Map As New SortedDictionary(Of String, Byte())(StringComparer.Ordinal)
        Public ReadOnly Waiting As List(Of String)  ' subtrees asked for, whose KTHXBAI is not in yet
        Private ReadOnly _subtrees As String()
        Private ReadOnly _count As Integer
        Private ReadOnly _watermark As New Dictionary(Of String, ULong)  ' subtree -> its KTHXBAI's sequence
        Private ReadOnly _syncedKeys As Dictionary(Of String, Integer)
        Public First, Last As ULong  ' the first and the last KVPUB applied
        Public Applied, Discarded As Integer
        ' Our writes: /facades/NAME/N = NAME/N for N = 1 ... W; the even ones with a ttl.
        Public ReadOnly Writes As New List(Of (Key As String, Value As Byte()))
        Private ReadOnly _seesOwn As Boolean
        Private ReadOnly _echoed As New HashSet(Of String), _expired As New HashSet(Of String)
        Private _deleted As Boolean
        Public DeleteSent As Boolean
        Private ReadOnly _emit As Emitter

        Public Sub New(name As String, subtrees As String(), count As Integer, writeCount As Integer, emit As Emitter)
            _emit = emit
            _subtrees = subtrees
            _count = count
            Waiting = subtrees.ToList()
            _syncedKeys = subtrees.ToDictionary(Function(tree) tree, Function(tree) 0)
            Dim prefix = $"/facades/{name}/"
            _seesOwn = subtrees.Any(Function(tree) prefix.StartsWith(tree, StringComparison.Ordinal))
            For n = 1 To writeCount
                Writes.Add((prefix & n, Encoding.ASCII.GetBytes($"{name}/{n}")))
            Next
        End Sub

        Public ReadOnly Property AllEchoed As Boolean
            Get
                Return _echoed.Count = Writes.Count
            End Get
        End Property

        Private Sub Tell(name As String, ParamArray fields As (Key As String, Value As Object)())
            _emit(name, fields)
        End Sub

        Private Sub Report(code As String, reason As String)
            Tell("error", ("code", code), ("reason", reason))
        End Sub

        Public Function SubtreesOf(key As String) As List(Of String)
            Return _subtrees.Where(Function(tree) key.StartsWith(tree, StringComparison.Ordinal)).ToList()
        End Function

        Private Sub [Set](key As String, value As Byte())
            If value.Length > 0 Then Map(key) = value Else Map.Remove(key)
        End Sub

        Public Sub OnSnapshot(frames As List(Of Byte()))
            If Matches(frames(0), KthxbaiWord) Then
                If frames.Count <> 5 OrElse frames(1).Length <> 8 OrElse Not IsSubtree(Latin1(frames(4))) Then
                    Report("malformed-kthxbai", $"not [KTHXBAI, sequence, -, -, subtree]: {Quote(frames)}")
                ElseIf Not Waiting.Contains(Latin1(frames(4))) Then
                    Report("unexpected-kthxbai", $"no request waits for subtree '{Shown(frames(4), MaxQuote)}'")
                Else
                    Dim tree = Latin1(frames(4))
                    Waiting.Remove(tree)
                    _watermark(tree) = BinaryPrimitives.ReadUInt64BigEndian(frames(1))
                    Tell("synced", ("subtree", tree), ("sequence", _watermark(tree)), ("keys", _syncedKeys(tree)))
                End If
                Return
            End If
            Dim problem = CheckKv(frames)
            If problem Is Nothing AndAlso Not Waiting.Any(Function(tree) Latin1(frames(0)).StartsWith(tree, StringComparison.Ordinal)) Then
                problem = $"'{Shown(frames(0), MaxQuote)}' is in no subtree still being sent"
            End If
            If problem IsNot Nothing Then
                Report("malformed-kvsync", problem)
                Return
            End If
            Dim key = Latin1(frames(0))
            For Each tree In Waiting.Where(Function(t) key.StartsWith(t, StringComparison.Ordinal))
                _syncedKeys(tree) += 1
            Next
            [Set](key, frames(4))
        End Sub

        ''' <summary>Apply a KVPUB if it is good and new; True when it was applied.</summary>
        Public Function OnUpdate(frames As List(Of Byte())) As Boolean
            If Matches(frames(0), HugzWord) Then Return False  ' a keep-alive: the engine is there
            Dim problem = CheckKv(frames)
            Dim trees = If(problem Is Nothing, SubtreesOf(Latin1(frames(0))), New List(Of String))
            If problem IsNot Nothing Then
                Report("malformed-kvpub", problem)
                Return False
            ElseIf trees.Count = 0 Then
                Report("unexpected-key", $"'{Shown(frames(0), MaxQuote)}' is in none of our subtrees")
                Return False
            End If
            Dim key = Latin1(frames(0)), sequence = BinaryPrimitives.ReadUInt64BigEndian(frames(1)), value = frames(4)
            ' The RFC's late-joiner rule: only what is newer than the snapshot, and than the last update.
            If sequence <= trees.Max(Function(tree) _watermark(tree)) OrElse sequence <= Last Then
                Discarded += 1
                Return False
            End If
            [Set](key, value)
            If First = 0UL Then First = sequence
            Last = sequence
            Applied += 1
            Dim mine = Writes.FindIndex(Function(write) write.Key = key)
            If mine < 0 Then Return True
            If Matches(value, Writes(mine).Value) Then
                _echoed.Add(key)
            ElseIf value.Length = 0 AndAlso mine = 0 AndAlso DeleteSent Then
                _deleted = True
            ElseIf value.Length = 0 AndAlso _echoed.Contains(key) Then
                _expired.Add(key)
            End If
            Return True
        End Function

        Public Function Finished() As Boolean
            If Waiting.Count > 0 OrElse Applied < _count Then Return False
            If Last <= _watermark.Values.DefaultIfEmpty(0UL).Max() Then Return False
            If _seesOwn AndAlso Writes.Count > 0 Then
                Dim ttlKeys = Writes.Where(Function(write, i) i Mod 2 = 1).Select(Function(write) write.Key)  ' N even
                Return AllEchoed AndAlso _deleted AndAlso ttlKeys.All(AddressOf _expired.Contains)
            End If
            Return True
        End Function
    End Class

    ''' <summary>The engine is gone or is a new one (PROTOCOL.md, "Restarts"): the session ends and the
    ''' facade starts over on new sockets.</summary>
    Private NotInheritable Class Restarted
        Inherits Exception
        Public ReadOnly Why As String  ' engine, sequence or silence
        Public ReadOnly Last As ULong  ' the highest sequence read from the SUB, 0 if none

        Public Sub New(reason As String, lastSeen As ULong)
            MyBase.New(reason)
            Why = reason
            Last = lastSeen
        End Sub
    End Class

    ''' <summary>A facade's sockets, new and connected (step 1): the SUB, the DEALER, the collector XPUB
    ''' (only with --writes above 0), and their monitors with --monitor on.</summary>
    Private NotInheritable Class FacadeSockets
        Implements IDisposable
        ' [SUB] SUB delivers only the updates whose key starts with one of its subtrees, and HUGZ.
        Public ReadOnly Updates As New SubscriberSocket()
        ' [DEALER] DEALER sends and receives freely, without REQ's lockstep and without an envelope of
        ' its own: every subtree's request goes out at once, and only the KTHXBAI's subtree says which
        ' request a reply answers.
        Public ReadOnly Snapshot As New DealerSocket()
        ' [XPUB] The collector's end is an XPUB: a PUB that hands us the collector's subscription as a
        ' message (first byte 1), so that we write only once the engine hears us.
        Public ReadOnly Collector As XPublisherSocket
        Private ReadOnly _monitor As SocketMonitor

        Public Sub New(args As ParseResult)
            Collector = If(args.GetValue(Of Integer)("--writes") > 0, New XPublisherSocket(), Nothing)
            _monitor = New SocketMonitor(MonitorOn(args))
            ' [linger] 0 on the SUB and the DEALER: closing drops what is still queued, which nobody is
            ' owed. 1000 ms on the collector: the last write (a delete) may still be queued when we exit.
            For Each socket In New NetMQSocket() {Updates, Snapshot, Collector}.Where(Function(s) s IsNot Nothing)
                socket.Options.Linger = TimeSpan.Zero
                socket.Options.MaxMsgSize = MaxMessage
            Next
            If Collector IsNot Nothing Then Collector.Options.Linger = TimeSpan.FromMilliseconds(1000)
            _monitor.Attach(Updates, "updates")
            _monitor.Attach(Snapshot, "snapshot")
            If Collector IsNot Nothing Then _monitor.Attach(Collector, "collector")
            Try  ' the protocol's order: SUB, DEALER, then the collector's XPUB
                Updates.Connect(args.GetValue(Of String)("--updates"))
                Snapshot.Connect(args.GetValue(Of String)("--snapshot"))
                Collector?.Connect(args.GetValue(Of String)("--collector"))
            Catch problem As Exception When IsEndpointProblem(problem)
                Dispose()
                Throw New Failure("connect", $"cannot connect: {problem.Message}")
            End Try
            SubscribeUpdates(Updates, args.GetValue(Of String())("--subtrees"))  ' connected first: HUGZ must go out last
        End Sub

        ''' <summary>Close every socket at once, the collector's too: writes queued for a dead engine are worth nothing.</summary>
        Public Sub Abandon()
            If Collector IsNot Nothing Then Collector.Options.Linger = TimeSpan.Zero
            Dispose()
        End Sub

        Public Sub Dispose() Implements IDisposable.Dispose
            _monitor.Dispose()  ' first: each socket's monitoring stops before it closes
            Updates.Dispose()
            Snapshot.Dispose()
            Collector?.Dispose()
        End Sub
    End Class

    Private Function RunFacade(args As ParseResult) As Integer
        Dim deadline As New Deadline(args.GetValue(Of Integer)("--timeout"))
        Dim sockets As New FacadeSockets(args)
        Emit("ready", ("name", args.GetValue(Of String)("--name")), ("subtrees", args.GetValue(Of String())("--subtrees")))
        Try
            Do
                Try
                    Dim facade = Follow(args, deadline, sockets)
                    Emit("done", ("sequence", facade.Last), ("first", facade.First), ("map", facade.Map.ToDictionary(Function(entry) entry.Key, Function(entry) HexOf(entry.Value))),
                         ("applied", facade.Applied), ("discarded", facade.Discarded))
                    Return 0
                Catch restart As Restarted
                    ' Start over on new sockets: the old ones may still hold the old engine's messages.
                    sockets.Abandon()
                    Emit("resynced", ("why", restart.Why), ("last", restart.Last))
                    sockets = New FacadeSockets(args)
                End Try
            Loop
        Finally
            sockets.Dispose()  ' once more after Abandon does nothing
        End Try
    End Function

    ''' <summary>Whether the SUB still hears the engine of this session, updating `seen` and `engine`
    ''' (Nothing: none yet), or throws Restarted("engine" or "sequence") when the message comes from
    ''' another engine: the same UUID in every HUGZ, and sequences that only rise (every update above
    ''' the HUGZ before it, every HUGZ at least the updates before it; PROTOCOL.md, "Restarts").</summary>
    Private Sub FollowEngine(frames As List(Of Byte()), ByRef seen As ULong, ByRef engine As Byte())
        If IsHugz(frames) Then
            Dim whole = frames.Count = 5 AndAlso frames(1).Length = 8
            Dim uuid = If(whole, frames(2), NoBytes)  ' empty: an RFC server's HUGZ, which has no name
            Dim sequence = If(whole, BinaryPrimitives.ReadUInt64BigEndian(frames(1)), 0UL)
            If engine Is Nothing Then
                engine = uuid
            ElseIf Not Matches(uuid, engine) Then
                Throw New Restarted("engine", seen)
            End If
            ' 0: an RFC server's HUGZ, which says nothing.
            If sequence <> 0UL AndAlso sequence < seen Then Throw New Restarted("sequence", seen)
            seen = Math.Max(seen, sequence)
        ElseIf CheckKv(frames) Is Nothing Then
            Dim sequence = BinaryPrimitives.ReadUInt64BigEndian(frames(1))
            If sequence <= seen Then Throw New Restarted("sequence", seen)
            seen = sequence
        End If  ' else a malformed message: the facade reports it, and it says nothing of the engine
    End Sub

    ''' <summary>One session with one engine: steps 2 to 6 of the facade. Returns the finished facade,
    ''' or throws Restarted when the engine turns out to be gone or new.</summary>
    Private Function Follow(args As ParseResult, deadline As Deadline, sockets As FacadeSockets) As Facade
        Dim subtrees = args.GetValue(Of String())("--subtrees")
        Dim writes = args.GetValue(Of Integer)("--writes")
        Dim ttl = args.GetValue(Of Integer)("--ttl")
        Dim silence = args.GetValue(Of Integer)("--silence")
        Dim timeout = args.GetValue(Of Integer)("--timeout")
        Dim updates = sockets.Updates, snapshot = sockets.Snapshot, collector = sockets.Collector
        Dim facade As New Facade(args.GetValue(Of String)("--name"), subtrees, args.GetValue(Of Integer)("--count"), writes, AddressOf Emit)
        Dim seen = 0UL  ' the highest sequence read from the SUB: HUGZ, and KVPUBs applied or discarded
        Dim engine As Byte() = Nothing  ' the UUID in the HUGZ that ends step 2 (empty from an RFC server); Nothing: none yet

        ' [slow joiner] Our subscriptions travel to the engine some time after we connect; updates made
        ' before they arrive are lost to us. The engine answers a subscription to HUGZ at once, and ours
        ' is the last: wait for a HUGZ, dropping whatever comes before it (the snapshot covers it).
        Do
            Dim frames = ReceiveWithin(updates, deadline.Cap(100))
            If frames IsNot Nothing AndAlso IsHugz(frames) Then
                FollowEngine(frames, seen, engine)  ' which engine, and its sequence now: every update after it is higher
                Exit Do
            End If
            If deadline.Expired() Then Throw New Failure("timeout", $"no HUGZ from the engine within {timeout} ms")
        Loop

        Dim heard = Environment.TickCount64  ' when the engine was last heard from: silence means it is gone
        Dim silent = Function() Environment.TickCount64 - heard >= silence

        AskSnapshots(snapshot, subtrees)
        Do While facade.Waiting.Count > 0  ' the SUB stays unread meanwhile: its updates wait, in order
            Dim frames = ReceiveWithin(snapshot, deadline.Cap(100))
            If frames IsNot Nothing Then
                heard = Environment.TickCount64
                facade.OnSnapshot(frames)
            ElseIf silent() Then
                Throw New Restarted("silence", seen)
            End If
            If deadline.Expired() Then Throw New Failure("timeout", $"subtrees [{String.Join(", ", facade.Waiting)}] never completed")
        Loop

        Dim collectorLive = False
        Do Until facade.Finished()
            If deadline.Expired() Then Throw New Failure("timeout", $"applied {facade.Applied} updates, up to {facade.Last}, and was not done")
            ' [poll] One poll for the three sockets (Nothing, the collector without --writes, is left
            ' out), a tenth of a second at most so that silence is noticed, never past the deadline;
            ' then one message from each ready socket, without waiting, in the order SUB, DEALER, XPUB.
            Dim ready = PollIn(New NetMQSocket() {updates, snapshot, collector}, deadline.Cap(100))
            Dim frames = If(ready.Contains(updates), ReceiveMessage(updates), Nothing)
            If frames IsNot Nothing Then
                heard = Environment.TickCount64
                FollowEngine(frames, seen, engine)
                facade.OnUpdate(frames)
            ElseIf silent() Then  ' not even a HUGZ, which the engine sends every --hugz ms
                Throw New Restarted("silence", seen)
            End If
            frames = If(ready.Contains(snapshot), ReceiveMessage(snapshot), Nothing)
            If frames IsNot Nothing Then Report("unexpected-snapshot", $"'{Shown(frames(0), MaxQuote)}' after every KTHXBAI")
            Dim frame = If(collector IsNot Nothing AndAlso ready.Contains(collector), ReceiveFrameIfReady(collector), Nothing)
            If frame IsNot Nothing AndAlso IsSubscribeAll(frame) AndAlso Not collectorLive Then
                collectorLive = True
                For n = 1 To writes
                    Dim write = facade.Writes(n - 1), written = If(n Mod 2 = 0, ttl, 0)
                    collector.SendMultipartBytes(KvsetFrames(write.Key, write.Value, written))
                    Emit("wrote", ("key", write.Key), ("value", HexOf(write.Value)), ("ttl", written))
                Next
            End If
            If collectorLive AndAlso Not facade.DeleteSent AndAlso facade.AllEchoed Then
                Dim first = facade.Writes(0).Key
                collector.SendMultipartBytes(KvsetFrames(first, NoBytes, 0))
                facade.DeleteSent = True
                Emit("wrote", ("key", first), ("value", ""), ("ttl", 0))
            End If
        Loop
        Return facade
    End Function
End Module
