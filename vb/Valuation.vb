' valuation: a PUSH/PULL pipeline with a control channel (examples/valuation/PROTOCOL.md).
Imports System.Buffers.Binary
Imports System.CommandLine
Imports System.Text
Imports NetMQ
Imports NetMQ.Sockets

Public Module Valuation
    Private ReadOnly Symbols As String() = {"AAPL", "GOOG", "GOOGL", "MSFT", "IBM"}
    Private Const ResendBatch = 1000  ' ids per resend message
    ' [max size] MaxMsgSize on every socket, set before bind or connect: NetMQ drops a bigger frame
    ' together with the connection that sent it, before we see it. The largest legal frames are a
    ' 32-byte worker name, `finished` and 8-byte ids and prices; send-only sockets still decode what
    ' a peer sends them.
    Friend Const MaxMessage = 256  ' bytes

    Public Function Roles() As Command
        Dim sink As New Command("sink", "collect results, re-dispatch lost orders") From {
            Endpoint("--results", "tcp://127.0.0.1:5560"),
            Endpoint("--control", "tcp://127.0.0.1:5561"),
            AtLeast("--workers", 1, defaultValue:=1),
            AtLeast("--count", 1, defaultValue:=100),
            AtLeast("--quiet", 1, defaultValue:=1000),
            AtLeast("--heartbeat", 1, defaultValue:=100),
            UInt64Option("--seed", 1),
            AtLeast("--timeout", 0, defaultValue:=0),
            MonitorOption()}
        sink.SetAction(AddressOf RunSink)

        Dim source As New Command("source", "hand out the batch, re-send what the sink misses") From {
            Endpoint("--orders", "tcp://127.0.0.1:5562"),
            Endpoint("--control", "tcp://127.0.0.1:5561"),
            AtLeast("--count", 1, defaultValue:=100),
            UInt64Option("--seed", 1),
            AtLeast("--timeout", 0, defaultValue:=30000),
            MonitorOption()}
        source.SetAction(AddressOf RunSource)

        Dim worker As New Command("worker", "price orders until the batch is finished") From {
            Endpoint("--orders", "tcp://127.0.0.1:5562"),
            Endpoint("--results", "tcp://127.0.0.1:5560"),
            Endpoint("--control", "tcp://127.0.0.1:5561"),
            NameOption("--name"),
            AtLeast("--rate", 0, defaultValue:=0),
            AtLeast("--timeout", 0, defaultValue:=30000),
            MonitorOption()}
        worker.SetAction(AddressOf RunWorker)

        Dim encode As New Command("encode", "print the frames of one order (the test vectors)") From {
            UInt64Option("--seed"),
            UInt64Option("--id")}
        encode.SetAction(AddressOf RunEncode)

        Return New Command("valuation", "a PUSH/PULL pipeline with a PUB/SUB control channel") From {
            sink, source, worker, encode}
    End Function

    ''' <summary>True when `frames` is the one-frame message `word` (a state: waiting, go, finished).</summary>
    Private Function IsOnly(frames As List(Of Byte()), word As String) As Boolean
        Return frames.Count = 1 AndAlso frames(0).AsSpan().SequenceEqual(Encoding.ASCII.GetBytes(word))
    End Function

    Friend Function Word(frame As Byte(), text As String) As Boolean
        Return frame.AsSpan().SequenceEqual(Encoding.ASCII.GetBytes(text))
    End Function

    Friend Function BigEndianUInt64(value As ULong) As Byte()
        Dim frame = New Byte(7) {}
        BinaryPrimitives.WriteUInt64BigEndian(frame, value)
        Return frame
    End Function

    Friend Function BigEndianInt64(value As Long) As Byte()
        Dim frame = New Byte(7) {}
        BinaryPrimitives.WriteInt64BigEndian(frame, value)
        Return frame
    End Function

    ' --- orders: a generator anyone can recompute -------------------------------------------------

    Public Structure Order
        Public Symbol As String
        Public Side As String  ' "B" or "S"
        Public Quantity As UInteger
        Public Cents As Long
    End Structure

    ''' <summary>Order `id` of the batch `seed`: three SplitMix64 steps (Prng.vb, the ticker's), modulo 2^64.</summary>
    Public Function MakeOrder(seed As ULong, id As ULong) As Order
        Dim z1 = SplitMix64(seed Xor (id * Golden))
        Dim z2 = SplitMix64(z1)
        Dim z3 = SplitMix64(z2)
        Return New Order With {
            .Symbol = Symbols(CInt(z1 Mod 5UL)),
            .Side = If(z2 Mod 2UL = 0UL, "B", "S"),
            .Quantity = CUInt(1UL + (z2 >> 1) Mod 1000UL),
            .Cents = CLng(100UL + z3 Mod 100000UL)}
    End Function

    Public Function OrderFrames(seed As ULong, id As ULong) As Byte()()
        Dim o = MakeOrder(seed, id)
        Dim quantity = New Byte(3) {}
        ' Big-endian (network order): unsigned 64-bit, unsigned 32-bit, signed 64-bit.
        BinaryPrimitives.WriteUInt32BigEndian(quantity, o.Quantity)
        Return {BigEndianUInt64(id), Encoding.ASCII.GetBytes(o.Symbol), Encoding.ASCII.GetBytes(o.Side),
                quantity, BigEndianInt64(o.Cents)}
    End Function

    ''' <summary>Quantity × cents, negated for a sell: exact in signed 64-bit within the order's ranges.</summary>
    Public Function Value(side As String, quantity As UInteger, cents As Long) As Long
        Return quantity * cents * If(side = "B", 1L, -1L)
    End Function

    Private Function RunEncode(args As ParseResult) As Integer
        Dim seed = args.GetValue(Of ULong)("--seed")
        Dim id = args.GetValue(Of ULong)("--id")
        Dim o = MakeOrder(seed, id)
        Emit("encoded", ("frames", OrderFrames(seed, id).Select(Function(frame) Convert.ToHexStringLower(frame)).ToList()),
                        ("value", Value(o.Side, o.Quantity, o.Cents)))
        Emit("done")
        Return 0
    End Function

    ' --- sink ------------------------------------------------------------------------------------

    Public Structure Result
        Public Worker As String
        Public Id As ULong
        Public Amount As Long
    End Structure

    ''' <summary>What is wrong with a worker name (1 to MaxName bytes of UTF-8), or Nothing when it is
    ''' good: then `name` holds it. The reason never echoes the peer's bytes.</summary>
    Private Function CheckName(frame As Byte(), ByRef name As String) As String
        If frame.Length < 1 OrElse frame.Length > MaxName Then Return $"a worker name of {frame.Length} bytes, not 1 to {MaxName}"
        Try
            name = Utf8.GetString(frame)  ' strict: invalid bytes throw
        Catch problem As DecoderFallbackException
            Return "the worker name is not UTF-8"
        End Try
        Return Nothing
    End Function

    ''' <summary>What is wrong with a `ready` message, or Nothing when it is good: then `name` holds the worker's name.</summary>
    Public Function CheckReady(frames As List(Of Byte()), ByRef name As String) As String
        If frames.Count <> 2 Then Return $"a ready has 2 frames, got {frames.Count}"
        Return CheckName(frames(1), name)
    End Function

    ''' <summary>
    ''' The first broken rule of a result as (code, reason), or Nothing when it is good: then `result`
    ''' holds it. Nothing a worker says is taken on trust: the value must be the one we compute
    ''' ourselves from the seed and the id, so a rogue worker can neither skew nor overflow the total.
    ''' </summary>
    Public Function CheckResult(frames As List(Of Byte()), count As Integer, seed As ULong, ByRef result As Result) As (Code As String, Reason As String)?
        ' [multipart] A result arrives whole or not at all; its frame count is checked, never assumed.
        If frames.Count <> 4 OrElse Not Word(frames(0), "result") OrElse frames(2).Length <> 8 OrElse frames(3).Length <> 8 Then
            Return ("malformed-result", $"not [result, name, id, value]: [{String.Join(", ", frames.Select(Function(f) f.Length))}] bytes")
        End If
        Dim worker As String = Nothing
        Dim problem = CheckName(frames(1), worker)
        If problem IsNot Nothing Then Return ("malformed-result", problem)
        Dim id = BinaryPrimitives.ReadUInt64BigEndian(frames(2))
        If id < 1UL OrElse id > CULng(count) Then Return ("unknown-id", $"id {id} is not in 1..{count}")
        Dim amount = BinaryPrimitives.ReadInt64BigEndian(frames(3))
        Dim o = MakeOrder(seed, id)
        Dim expected = Value(o.Side, o.Quantity, o.Cents)
        If amount <> expected Then Return ("wrong-value", $"order {id} is worth {expected}, not {amount}")
        result = New Result With {.Worker = worker, .Id = id, .Amount = amount}
        Return Nothing
    End Function

    Private Function RunSink(args As ParseResult) As Integer
        Dim wanted = args.GetValue(Of Integer)("--workers")
        Dim count = args.GetValue(Of Integer)("--count")
        Dim quiet = args.GetValue(Of Integer)("--quiet")
        Dim heartbeat = args.GetValue(Of Integer)("--heartbeat")
        Dim seed = args.GetValue(Of ULong)("--seed")
        Dim timeout = args.GetValue(Of Integer)("--timeout")
        ' [PULL] PULL fair-queues readiness and results from every connected worker.
        ' [PUB] PUB fans the control messages out to every subscriber (the source and the workers); it
        ' never blocks, and drops for a subscriber not connected yet or past its high-water mark.
        Using stopSignal As New StopSignal(),
              results As New PullSocket(),
              control As New PublisherSocket(),
              monitor As New SocketMonitor(MonitorOn(args))  ' disposed first: before the sockets close
            Dim deadline As New Deadline(timeout)
            ' [linger] 0: the sink leaves only when told to, and nothing it sent is owed to anyone then:
            ' closing drops whatever control message is still queued.
            results.Options.Linger = TimeSpan.Zero
            control.Options.Linger = TimeSpan.Zero
            results.Options.MaxMsgSize = MaxMessage
            control.Options.MaxMsgSize = MaxMessage
            monitor.Attach(results, "results")
            monitor.Attach(control, "control")
            Try
                results.Bind(args.GetValue(Of String)("--results"))
                control.Bind(args.GetValue(Of String)("--control"))
            Catch problem As Exception When IsEndpointProblem(problem)
                Throw New Failure("bind", $"cannot bind: {problem.Message}")
            End Try
            Emit("ready", ("results", results.Options.LastEndpoint), ("control", control.Options.LastEndpoint))

            Dim state = "waiting"
            Dim ready As New HashSet(Of String)
            Dim values As New Dictionary(Of ULong, Long)  ' id -> value, for every id counted
            ' The sum of checked values, kept as we go: each is at most 1000 × 100099 cents either way,
            ' so no --count can overflow a signed 64-bit total, and it stays exact to the cent.
            Dim total = 0L
            Dim priced As New Dictionary(Of String, Integer)  ' worker -> results counted
            Dim resent As New SortedSet(Of ULong)  ' every id ever re-dispatched
            Dim nextBeat = Environment.TickCount64, quietSince = Environment.TickCount64

            ' [HWM] PUB never blocks: at a subscriber's high-water mark (NetMQ's default, 1000
            ' messages) it drops for that subscriber; the state is repeated every heartbeat anyway.
            Dim setState =
                Sub(newState As String)
                    state = newState
                    control.SendFrame(Encoding.ASCII.GetBytes(state))  ' at once; the heartbeat repeats it for late joiners
                End Sub

            Do Until stopSignal.Raised
                If deadline.Expired() Then Throw New Failure("timeout", $"still running after {timeout} ms with {values.Count} results")
                Dim waitMs = Math.Max(0, nextBeat - Environment.TickCount64)
                ' [poll] The wait for a message is also the heartbeat timer: a poll of the PULL (the PUB
                ' has nothing to read) up to the next heartbeat, never past the deadline, then a receive
                ' that does not wait. One message per turn. .NET takes signals on a thread of its own: no EINTR.
                Dim frames = If(PollIn(results, deadline.Cap(waitMs)), ReceiveIfReady(results), Nothing)
                If frames IsNot Nothing Then
                    If Word(frames(0), "ready") Then
                        Dim name As String = Nothing
                        Dim problem = CheckReady(frames, name)
                        If problem IsNot Nothing Then
                            ' Not a worker: it does not count toward --workers.
                            Emit("error", ("code", "malformed-ready"), ("reason", problem))
                        Else
                            If ready.Add(name) Then Emit("worker", ("name", name))
                            If state = "waiting" AndAlso ready.Count >= wanted Then
                                ' [slow joiner] Each worker heard a control message before saying ready: its
                                ' subscription is live, so its SUB cannot miss this `go`.
                                setState("go")
                                Emit("started", ("workers", ready.Count))
                                quietSince = Environment.TickCount64
                            End If
                        End If
                    Else
                        Dim result As New Result()
                        Dim problem = CheckResult(frames, count, seed, result)
                        If problem IsNot Nothing Then
                            Emit("error", ("code", problem.Value.Code), ("reason", problem.Value.Reason))
                        ElseIf values.ContainsKey(result.Id) AndAlso resent.Contains(result.Id) Then
                            Emit("late-duplicate", ("id", result.Id), ("worker", result.Worker))  ' we asked for it twice
                        ElseIf values.ContainsKey(result.Id) Then
                            Emit("error", ("code", "duplicate"), ("reason", $"a second result for order {result.Id}, from {result.Worker}"))
                        Else
                            values(result.Id) = result.Amount
                            total += result.Amount
                            priced(result.Worker) = priced.GetValueOrDefault(result.Worker) + 1
                            quietSince = Environment.TickCount64
                            Emit("result", ("id", result.Id), ("worker", result.Worker))
                            If values.Count = count Then
                                setState("finished")
                                Emit("complete", ("total", total), ("workers", priced), ("resent", resent.ToList()))
                            End If
                        End If
                    End If
                End If
                Dim now = Environment.TickCount64
                If state = "go" AndAlso now - quietSince >= quiet Then
                    ' Nothing acknowledges a PUSH: what was queued for a worker that died is gone. Only
                    ' the sink knows what is missing, so it asks the source, over the control channel.
                    Dim missing = Enumerable.Range(1, count).Select(Function(i) CULng(i)).Where(Function(id) Not values.ContainsKey(id)).ToList()
                    For start = 0 To missing.Count - 1 Step ResendBatch
                        Dim batch = missing.Skip(start).Take(ResendBatch)
                        control.SendMultipartBytes({Encoding.ASCII.GetBytes("resend")}.Concat(batch.Select(AddressOf BigEndianUInt64)))
                    Next
                    resent.UnionWith(missing)
                    Emit("resend", ("ids", missing))
                    quietSince = now
                End If
                If now >= nextBeat Then
                    ' Level-triggered: the state again and again, so a late subscriber learns it anyway.
                    control.SendFrame(Encoding.ASCII.GetBytes(state))
                    nextBeat = now + heartbeat
                End If
            Loop
            Emit("done", ("orders", values.Count), ("total", total))
        End Using
        Return 0
    End Function

    ' --- source ----------------------------------------------------------------------------------

    Private Function RunSource(args As ParseResult) As Integer
        Dim count = args.GetValue(Of Integer)("--count")
        Dim seed = args.GetValue(Of ULong)("--seed")
        Dim timeout = args.GetValue(Of Integer)("--timeout")
        Dim deadline As New Deadline(timeout)
        ' [PUSH] PUSH deals orders round-robin to the connected workers; with no room (no worker yet,
        ' or every queue at the high-water mark) it blocks, mute, and never drops: SendWhenRoom.
        ' [SUB] SUB, subscribed to "" before it connects: every control message, states and resends.
        Using orders As New PushSocket(),
              control As New SubscriberSocket(),
              monitor As New SocketMonitor(MonitorOn(args))  ' disposed first: before the sockets close
            ' [linger] 0: the source leaves only on `finished`, when no order it sent is needed any
            ' more; closing drops what is still queued.
            orders.Options.Linger = TimeSpan.Zero
            control.Options.Linger = TimeSpan.Zero
            orders.Options.MaxMsgSize = MaxMessage
            control.Options.MaxMsgSize = MaxMessage
            control.Subscribe("")
            monitor.Attach(orders, "orders")
            monitor.Attach(control, "control")
            Try
                orders.Bind(args.GetValue(Of String)("--orders"))
            Catch problem As Exception When IsEndpointProblem(problem)
                Throw New Failure("bind", $"cannot bind: {problem.Message}")
            End Try
            Try
                control.Connect(args.GetValue(Of String)("--control"))
            Catch problem As Exception When IsEndpointProblem(problem)
                Throw New Failure("connect", $"cannot connect: {problem.Message}")
            End Try
            Emit("ready", ("orders", orders.Options.LastEndpoint))

            ' [poll] The next control message: a poll of the SUB, a second at most and never past the
            ' deadline, then a receive that does not wait; Nothing when none came.
            Dim nextControl =
                Function() As List(Of Byte())
                    If PollIn(control, deadline.Cap(1000)) Then Return ReceiveIfReady(control)
                    If deadline.Expired() Then Throw New Failure("timeout", $"not finished after {timeout} ms")
                    Return Nothing
                End Function
            Dim send = Sub(id As ULong) SendWhenRoom(orders, OrderFrames(seed, id), deadline, $"order {id}")

            ' [slow joiner] The sink repeats its state every heartbeat: however late our subscription
            ' reached it, `go` comes.
            Do
                Dim message = nextControl()
                If message IsNot Nothing AndAlso IsOnly(message, "go") Then Exit Do
            Loop
            For id = 1UL To CULng(count)
                send(id)
            Next
            Emit("sent", ("orders", count))
            Dim sent = count
            Do
                Dim message = nextControl()
                If message Is Nothing Then Continue Do
                If IsOnly(message, "finished") Then Exit Do
                If Word(message(0), "resend") Then
                    ' The ids of our orders, 8 bytes each; anything else is no order of ours: ignored.
                    Dim ids = message.Skip(1).Where(Function(frame) frame.Length = 8).Select(Function(frame) BinaryPrimitives.ReadUInt64BigEndian(frame)) _
                        .Where(Function(id) id >= 1UL AndAlso id <= CULng(count)).ToList()
                    For Each id In ids
                        send(id)  ' the same bytes as the first time
                    Next
                    sent += ids.Count
                    Emit("resent", ("ids", ids))
                End If
            Loop
            Emit("done", ("sent", sent))
        End Using
        Return 0
    End Function

    ' --- worker ----------------------------------------------------------------------------------

    ''' <summary>The first broken rule of an order as (code, reason), or Nothing when it is good: then `order` holds it.</summary>
    Public Function CheckOrder(frames As List(Of Byte()), ByRef id As ULong, ByRef order As Order) As (Code As String, Reason As String)?
        ' [multipart] An order arrives whole or not at all; its frame count is checked, never assumed.
        Dim sizes = frames.Select(Function(frame) frame.Length).ToList()
        If frames.Count <> 5 OrElse sizes(0) <> 8 OrElse sizes(1) < 1 OrElse sizes(1) > 8 OrElse sizes(2) <> 1 OrElse sizes(3) <> 4 OrElse sizes(4) <> 8 Then
            Return ("malformed-order", $"frame sizes [{String.Join(", ", sizes)}], expected [8, 1-8, 1, 4, 8]")
        End If
        If Not frames(1).All(Function(b) b >= AscW("A"c) AndAlso b <= AscW("Z"c)) OrElse Not (Word(frames(2), "B") OrElse Word(frames(2), "S")) Then
            Return ("malformed-order", $"symbol '{Shown(frames(1), 8)}' or side '{Shown(frames(2), 1)}'")
        End If
        Dim quantity = BinaryPrimitives.ReadUInt32BigEndian(frames(3))
        Dim cents = BinaryPrimitives.ReadInt64BigEndian(frames(4))
        If quantity < 1UI OrElse quantity > 1000UI OrElse cents < 100L OrElse cents > 100099L Then  ' so no value can overflow
            Return ("malformed-order", $"quantity {quantity} or price {cents} cents out of range")
        End If
        id = BinaryPrimitives.ReadUInt64BigEndian(frames(0))
        order = New Order With {
            .Symbol = Encoding.ASCII.GetString(frames(1)),
            .Side = Encoding.ASCII.GetString(frames(2)),
            .Quantity = quantity,
            .Cents = cents}
        Return Nothing
    End Function

    Private Function RunWorker(args As ParseResult) As Integer
        Dim name = args.GetValue(Of String)("--name")
        Dim rate = args.GetValue(Of Integer)("--rate")
        Dim timeout = args.GetValue(Of Integer)("--timeout")
        Dim deadline As New Deadline(timeout)
        ' [PULL] PULL fair-queues orders from every connected pusher; here, the one source.
        ' [PUSH] PUSH to the sink, the only peer: at the high-water mark it blocks (mute), never drops.
        Using orders As New PullSocket(),
              results As New PushSocket(),
              control As New SubscriberSocket(),
              monitor As New SocketMonitor(MonitorOn(args))  ' disposed first: before the sockets close
            ' [linger] 0: the worker leaves only on `finished`, when the sink has every result it
            ' needs; closing drops what is still queued.
            orders.Options.Linger = TimeSpan.Zero
            results.Options.Linger = TimeSpan.Zero
            control.Options.Linger = TimeSpan.Zero
            orders.Options.MaxMsgSize = MaxMessage
            results.Options.MaxMsgSize = MaxMessage
            control.Options.MaxMsgSize = MaxMessage
            control.Subscribe("")
            monitor.Attach(orders, "orders")
            monitor.Attach(results, "results")
            monitor.Attach(control, "control")
            Try  ' PULL first: it should be connected long before the source deals the batch
                orders.Connect(args.GetValue(Of String)("--orders"))
                results.Connect(args.GetValue(Of String)("--results"))
                control.Connect(args.GetValue(Of String)("--control"))
            Catch problem As Exception When IsEndpointProblem(problem)
                Throw New Failure("connect", $"cannot connect: {problem.Message}")
            End Try

            ' [slow joiner] Once one control message has arrived, our subscription is live: no later
            ' one can be missed, and the sink, which says `go` only after our ready, cannot miss us.
            Dim first As List(Of Byte()) = Nothing
            Do While first Is Nothing
                If deadline.Expired() Then Throw New Failure("timeout", "no control message from the sink")
                first = If(PollIn(control, deadline.Cap(1000)), ReceiveIfReady(control), Nothing)
            Loop
            Dim finished = IsOnly(first, "finished")
            Dim hello = {Encoding.ASCII.GetBytes("ready"), Utf8.GetBytes(name)}
            SendWhenRoom(results, hello, deadline, "ready")
            Emit("ready", ("name", name))

            Dim count = 0
            Dim nextOrder As Double = Environment.TickCount64  ' ms on the monotonic clock; 1000 / rate need not be whole
            Do Until finished
                If deadline.Expired() Then Throw New Failure("timeout", $"not finished after {timeout} ms")
                Dim waitMs = CLng(Math.Truncate(nextOrder - Environment.TickCount64))
                ' [poll] One wait for both sockets, no busy loop: the PULL and the SUB, a second at most
                ' and never past the deadline. With --rate, until the next order is due, the SUB only:
                ' orders wait in our PULL queue, and behind it in the source's PUSH queue for us. Then
                ' each ready socket gives one message, in the protocol's order (PULL, then SUB), taken
                ' without waiting: a poll's "ready" is a hint. .NET takes signals on a thread of its own.
                Dim ready = If(rate > 0 AndAlso waitMs > 0,
                               PollIn(New NetMQSocket() {control}, deadline.Cap(waitMs)),
                               PollIn(New NetMQSocket() {orders, control}, deadline.Cap(1000)))
                Dim message = If(ready.Contains(orders), ReceiveIfReady(orders), Nothing)
                If message IsNot Nothing Then
                    Dim id = 0UL, order As New Order()
                    Dim problem = CheckOrder(message, id, order)
                    If problem IsNot Nothing Then
                        Emit("error", ("code", problem.Value.Code), ("reason", problem.Value.Reason))
                    Else
                        Dim result = {Encoding.ASCII.GetBytes("result"), Utf8.GetBytes(name), BigEndianUInt64(id),
                                      BigEndianInt64(Value(order.Side, order.Quantity, order.Cents))}
                        SendWhenRoom(results, result, deadline, $"the result of order {id}")
                        count += 1
                        Emit("priced", ("id", id))
                        If rate > 0 Then nextOrder = Environment.TickCount64 + 1000.0 / rate
                    End If
                End If
                message = If(ready.Contains(control), ReceiveIfReady(control), Nothing)
                If message IsNot Nothing Then
                    finished = IsOnly(message, "finished")  ' states and resends; resends are the source's business
                    ' A sink waiting for its workers, a restarted one too: ready again.
                    If IsOnly(message, "waiting") Then SendWhenRoom(results, hello, deadline, "ready")
                End If
            Loop
            Emit("done", ("priced", count))
        End Using
        Return 0
    End Function
End Module
