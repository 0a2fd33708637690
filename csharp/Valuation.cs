// valuation: a PUSH/PULL pipeline with a control channel (examples/valuation/PROTOCOL.md).
using System.Buffers.Binary;
using System.CommandLine;
using System.Diagnostics;
using System.Text;
using NetMQ;
using NetMQ.Sockets;

static class Valuation
{
    static readonly string[] Symbols = ["AAPL", "GOOG", "GOOGL", "MSFT", "IBM"];
    const int ResendBatch = 1000; // ids per resend message

    // [max size] 256 bytes per frame (NetMQ Options.MaxMsgSize) on every socket, send-only ones
    // included, set before bind or connect: NetMQ drops a bigger frame together with the connection
    // that sent it, so no peer makes a role allocate without bound (a subscription included). The
    // largest legal frames are a 32-byte worker name, `finished` and 8-byte ids.
    internal const long MaxMessage = 256;

    // The control channel's frame 0: the three states, and a resend's first frame.
    internal static readonly byte[] Waiting = "waiting"u8.ToArray(), Go = "go"u8.ToArray(), Finished = "finished"u8.ToArray();
    internal static readonly byte[] Resend = "resend"u8.ToArray();
    // Frame 0 of the messages to the sink.
    internal static readonly byte[] Ready = "ready"u8.ToArray(), Result = "result"u8.ToArray();

    record SinkArgs(
        string Results, string Control, int Workers, int Count, ulong Seed, int Quiet, int Heartbeat, int Timeout, bool Monitor);

    record SourceArgs(string Orders, string Control, int Count, ulong Seed, int Timeout, bool Monitor);

    record WorkerArgs(string Orders, string Results, string Control, string Name, int Rate, int Timeout, bool Monitor);

    record EncodeArgs(ulong Seed, ulong Id);

    /// <summary>One order, as the generator makes it or as a worker reads it off the wire.</summary>
    internal readonly record struct Order(ulong Id, string Symbol, char Side, uint Quantity, long Cents)
    {
        /// <summary>Quantity times price, negated for a sell: exact in 64 bits within the protocol's ranges,
        /// which the generator keeps and a worker checks.</summary>
        public long Value => Quantity * Cents * (Side == 'B' ? 1 : -1);
    }

    /// <summary>A result that passed every check.</summary>
    internal readonly record struct Priced(string Worker, ulong Id, long Value);

    public static Command Command() => new("valuation", "a PUSH/PULL pipeline with a control channel")
    {
        SinkCommand(), SourceCommand(), WorkerCommand(), EncodeCommand(),
    };

    static Command SinkCommand()
    {
        Option<string> results = Flags.Endpoint("--results", "tcp://127.0.0.1:5560");
        Option<string> control = Flags.Endpoint("--control", "tcp://127.0.0.1:5561");
        Option<int> workers = Flags.AtLeast("--workers", 1, 1);
        Option<int> count = Flags.AtLeast("--count", 1, 100);
        Option<ulong> seed = Flags.UInt64("--seed", 1);
        Option<int> quiet = Flags.AtLeast("--quiet", 1, 1000);
        Option<int> heartbeat = Flags.AtLeast("--heartbeat", 1, 100);
        Option<int> timeout = Flags.AtLeast("--timeout", 0, 0);
        Option<string> monitor = Flags.Monitor();
        Command sink = new("sink", "collect results, re-dispatch lost orders")
        {
            results, control, workers, count, seed, quiet, heartbeat, timeout, monitor,
        };
        sink.SetAction(p => RunSink(new(
            p.GetValue(results)!, p.GetValue(control)!, p.GetValue(workers), p.GetValue(count), p.GetValue(seed),
            p.GetValue(quiet), p.GetValue(heartbeat), p.GetValue(timeout), p.GetValue(monitor) == "on")));
        return sink;
    }

    static Command SourceCommand()
    {
        Option<string> orders = Flags.Endpoint("--orders", "tcp://127.0.0.1:5562");
        Option<string> control = Flags.Endpoint("--control", "tcp://127.0.0.1:5561");
        Option<int> count = Flags.AtLeast("--count", 1, 100);
        Option<ulong> seed = Flags.UInt64("--seed", 1);
        Option<int> timeout = Flags.AtLeast("--timeout", 0, 30000);
        Option<string> monitor = Flags.Monitor();
        Command source = new("source", "hand out the batch, re-send what the sink misses")
        {
            orders, control, count, seed, timeout, monitor,
        };
        source.SetAction(p => RunSource(new(
            p.GetValue(orders)!, p.GetValue(control)!, p.GetValue(count), p.GetValue(seed), p.GetValue(timeout),
            p.GetValue(monitor) == "on")));
        return source;
    }

    static Command WorkerCommand()
    {
        Option<string> orders = Flags.Endpoint("--orders", "tcp://127.0.0.1:5562");
        Option<string> results = Flags.Endpoint("--results", "tcp://127.0.0.1:5560");
        Option<string> control = Flags.Endpoint("--control", "tcp://127.0.0.1:5561");
        Option<string> name = Flags.Name("--name");
        Option<int> rate = Flags.AtLeast("--rate", 0, 0);
        Option<int> timeout = Flags.AtLeast("--timeout", 0, 30000);
        Option<string> monitor = Flags.Monitor();
        Command worker = new("worker", "price orders until the batch is finished")
        {
            orders, results, control, name, rate, timeout, monitor,
        };
        worker.SetAction(p => RunWorker(new(
            p.GetValue(orders)!, p.GetValue(results)!, p.GetValue(control)!, p.GetValue(name)!,
            p.GetValue(rate), p.GetValue(timeout), p.GetValue(monitor) == "on")));
        return worker;
    }

    static Command EncodeCommand()
    {
        Option<ulong> seed = Flags.UInt64("--seed");
        Option<ulong> id = Flags.UInt64("--id");
        Command encode = new("encode", "print the frames of one order (the test vectors)") { seed, id };
        encode.SetAction(p => RunEncode(new(p.GetValue(seed), p.GetValue(id))));
        return encode;
    }

    // --- orders: a generator anyone can recompute ------------------------------------------------

    internal static Order Generate(ulong seed, ulong id)
    {
        ulong z1 = Prng.SplitMix64(seed ^ (id * Prng.Golden)); // ulong arithmetic wraps: modulo 2^64
        ulong z2 = Prng.SplitMix64(z1);
        ulong z3 = Prng.SplitMix64(z2);
        return new(id, Symbols[z1 % 5], z2 % 2 == 0 ? 'B' : 'S', (uint)(1 + (z2 >> 1) % 1000), (long)(100 + z3 % 100000));
    }

    static byte[] U64(ulong number)
    {
        var frame = new byte[8];
        BinaryPrimitives.WriteUInt64BigEndian(frame, number);
        return frame;
    }

    internal static byte[] I64(long number)
    {
        var frame = new byte[8];
        BinaryPrimitives.WriteInt64BigEndian(frame, number);
        return frame;
    }

    internal static byte[][] OrderFrames(Order order)
    {
        // Big-endian (network order), whatever the machine's own byte order.
        var quantity = new byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(quantity, order.Quantity);
        return [U64(order.Id), Encoding.ASCII.GetBytes(order.Symbol), [(byte)order.Side], quantity, I64(order.Cents)];
    }

    static void RunEncode(EncodeArgs args)
    {
        Order order = Generate(args.Seed, args.Id);
        Contract.Emit("encoded", new { frames = OrderFrames(order).Select(Convert.ToHexStringLower).ToArray(), value = order.Value });
        Contract.Emit("done");
    }

    /// <summary>Whether a control message is this one state (one frame).</summary>
    static bool IsState(List<byte[]>? message, byte[] state) => message is [var only] && only.AsSpan().SequenceEqual(state);

    /// <summary>The sizes of a message's frames, for error reasons: the first 8 at most.</summary>
    static string Sizes(List<byte[]> frames) =>
        $"[{string.Join(", ", frames.Take(8).Select(frame => frame.Length))}{(frames.Count > 8 ? ", ..." : "")}]";

    /// <summary>Milliseconds from now until <paramref name="due"/>, rounded up (a poll timeout), never negative.</summary>
    internal static TimeSpan Until(TimeSpan due, Stopwatch clock) =>
        TimeSpan.FromMilliseconds(Math.Max(0, Math.Ceiling((due - clock.Elapsed).TotalMilliseconds)));

    // --- sink ------------------------------------------------------------------------------------

    // The sink trusts nothing a worker says: not its name, not its figures.

    /// <summary>What is wrong with a worker name (1 to 32 bytes of UTF-8), or null and the name. The
    /// reason never echoes the peer's bytes.</summary>
    static string? CheckName(byte[] frame, out string name)
    {
        name = "";
        if (frame.Length is < 1 or > Flags.MaxName)
            return $"a worker name of {frame.Length} bytes, not 1 to {Flags.MaxName}";
        try
        {
            name = Contract.Strict.GetString(frame);
            return null;
        }
        catch (DecoderFallbackException)
        {
            return "the worker name is not UTF-8";
        }
    }

    /// <summary>The broken rule of a `ready` (frame 0 is `ready`), as (code, reason), or null and the name.</summary>
    static (string Code, string Reason)? CheckReady(List<byte[]> frames, out string name)
    {
        name = "";
        if (frames.Count != 2)
            return ("malformed-ready", $"a ready has 2 frames, not {frames.Count}");
        return CheckName(frames[1], out name) is string reason ? ("malformed-ready", reason) : null;
    }

    /// <summary>The first broken rule of a result, as (code, reason), or null and the result when it is
    /// good. Its value must be the one recomputed from the seed: then no sum of them can overflow.</summary>
    static (string Code, string Reason)? CheckResult(List<byte[]> frames, int count, ulong seed, out Priced result)
    {
        result = default;
        if (frames.Count != 4 || !frames[0].AsSpan().SequenceEqual(Result))
            return ("malformed-result", $"not [result, name, id, value]: {Sizes(frames)} bytes");
        if (CheckName(frames[1], out string worker) is string reason)
            return ("malformed-result", reason);
        if (frames[2].Length != 8 || frames[3].Length != 8)
            return ("malformed-result", $"id and value have {frames[2].Length} and {frames[3].Length} bytes, not 8 each");
        ulong id = BinaryPrimitives.ReadUInt64BigEndian(frames[2]);
        if (id < 1 || id > (ulong)count)
            return ("unknown-id", $"id {id} is not in 1..{count}");
        long value = BinaryPrimitives.ReadInt64BigEndian(frames[3]), expected = Generate(seed, id).Value;
        if (value != expected)
            return ("wrong-value", $"order {id} is worth {expected}, not {value}");
        result = new(worker, id, value);
        return null;
    }

    /// <summary>A message whose frame 0 is `ready`: true when it is a good one, and then its worker is in
    /// <paramref name="ready"/> (reported as `worker` the first time).</summary>
    internal static bool OnReady(List<byte[]> frames, HashSet<string> ready, Report report)
    {
        if (CheckReady(frames, out string worker) is (string code, string reason))
        {
            report("error", new { code, reason }); // not a worker: it counts for nothing
            return false;
        }
        if (ready.Add(worker))
            report("worker", new { name = worker });
        return true;
    }

    /// <summary>The sink's books for one batch of orders 1 to <paramref name="count"/>: every result checked,
    /// counted once per id, and the ids still missing.</summary>
    internal sealed class Books(int count, ulong seed, Report report)
    {
        readonly Dictionary<ulong, long> values = []; // id -> value in cents: one counted result per id
        public Dictionary<string, int> Workers { get; } = []; // worker -> results counted
        public SortedSet<ulong> Resent { get; } = []; // every id ever re-dispatched
        public int Counted => values.Count;
        public bool Complete => values.Count == count;
        // Every value was checked against the seed, so |value| <= 1000 x 100099: no sum of --count of
        // them (at most 2^31 - 1) leaves 64 bits, and the total stays an exact integer.
        public long Total => values.Values.Sum();

        /// <summary>Check a result (any message to the sink but a ready) and count it: true when it was
        /// counted, a first result for its id.</summary>
        public bool OnResult(List<byte[]> frames)
        {
            if (CheckResult(frames, count, seed, out Priced result) is (string code, string reason))
            {
                report("error", new { code, reason });
            }
            else if (values.ContainsKey(result.Id) && Resent.Contains(result.Id))
            {
                // We asked for this order twice: the first worker was slow, not dead.
                report("late-duplicate", new { id = result.Id, worker = result.Worker });
            }
            else if (values.ContainsKey(result.Id))
            {
                report("error", new { code = "duplicate", reason = $"a second result for order {result.Id}, from {result.Worker}" });
            }
            else
            {
                values[result.Id] = result.Value;
                Workers[result.Worker] = Workers.GetValueOrDefault(result.Worker) + 1;
                report("result", new { id = result.Id, worker = result.Worker });
                return true;
            }
            return false;
        }

        /// <summary>Every id still missing, ascending; each is recorded as re-dispatched.</summary>
        public List<ulong> Redispatch()
        {
            var missing = Enumerable.Range(1, count).Select(id => (ulong)id).Where(id => !values.ContainsKey(id)).ToList();
            Resent.UnionWith(missing);
            return missing;
        }
    }

    static void RunSink(SinkArgs args)
    {
        using var stop = new StopSignal();
        var deadline = new Deadline(args.Timeout);
        // [PULL] Fair-queues: it takes readiness and results from every connected worker in turn.
        using var results = new PullSocket();
        // [PUB] Fan-out: every control message goes to every subscriber connected at that moment. It
        // never blocks: one not connected yet misses it (the slow joiner, hence the heartbeat below),
        // and so does one whose queue is at the HWM.
        using var control = new PublisherSocket();
        // [linger] 0: the sink leaves only when told to, and by then nothing it sent is still needed;
        // closing drops what is still queued.
        results.Options.Linger = TimeSpan.Zero;
        control.Options.Linger = TimeSpan.Zero;
        results.Options.MaxMsgSize = MaxMessage;
        control.Options.MaxMsgSize = MaxMessage; // PUB sends, but it still decodes subscriptions
        using var resultsMonitor = SocketMonitor.Attach(results, "results", args.Monitor);
        using var controlMonitor = SocketMonitor.Attach(control, "control", args.Monitor);
        Sockets.Bind(results, args.Results);
        Sockets.Bind(control, args.Control);
        Contract.Emit("ready", new { results = results.Options.LastEndpoint, control = control.Options.LastEndpoint });

        byte[] state = Waiting;
        var ready = new HashSet<string>();
        var books = new Books(args.Count, args.Seed, Contract.Emit);
        var clock = Stopwatch.StartNew();
        TimeSpan nextBeat = clock.Elapsed, quietSince = clock.Elapsed;
        TimeSpan quiet = TimeSpan.FromMilliseconds(args.Quiet), heartbeat = TimeSpan.FromMilliseconds(args.Heartbeat);

        void SetState(byte[] next)
        {
            state = next;
            control.SendFrame(state); // at once; the heartbeat repeats it for late joiners
        }

        while (!stop.Raised)
        {
            if (deadline.Expired)
                throw new Failure("timeout", $"still running after {args.Timeout} ms with {books.Counted} results");
            // [poll] The PULL, the one socket the sink reads, with a timeout up to the next heartbeat,
            // never past the deadline: the heartbeat, the quiet period, the deadline and the stop flag
            // all get their turn on this one thread. Then a receive that does not wait (POLLIN is a
            // hint); no EINTR reaches a .NET poll (StopSignal). One message per turn.
            // [multipart] A ready or a result arrives whole or not at all, but how many frames is the
            // peer's choice: frame 0, which every message has, says which it claims to be, and its frame
            // count is checked (CheckReady, CheckResult) before any other frame is used.
            if (results.PollIn(deadline.Cap(Until(nextBeat, clock))) && results.ReceiveIfReady() is { } frames)
            {
                if (frames[0].AsSpan().SequenceEqual(Ready))
                {
                    // Each worker saw a control message before saying ready, so its SUB is live: it
                    // cannot miss the `go` that follows.
                    if (OnReady(frames, ready, Contract.Emit) && state == Waiting && ready.Count >= args.Workers)
                    {
                        SetState(Go);
                        Contract.Emit("started", new { workers = ready.Count });
                        quietSince = clock.Elapsed;
                    }
                }
                else if (books.OnResult(frames))
                {
                    quietSince = clock.Elapsed;
                    if (books.Complete)
                    {
                        SetState(Finished);
                        Contract.Emit("complete", new { total = books.Total, workers = books.Workers, resent = books.Resent });
                    }
                }
            }
            TimeSpan now = clock.Elapsed;
            if (state == Go && now - quietSince >= quiet)
            {
                // Nothing acknowledges a PUSH: what was queued for a worker that died is gone, silently.
                // Only the sink can tell what is missing; it asks the source again, on the control channel.
                var missing = books.Redispatch();
                foreach (ulong[] batch in missing.Chunk(ResendBatch))
                    control.SendMultipartBytes(batch.Select(U64).Prepend(Resend));
                Contract.Emit("resend", new { ids = missing });
                quietSince = now;
            }
            if (now >= nextBeat)
            {
                // [slow joiner] A subscriber misses what is published before its subscription reaches
                // us; the state is level-triggered, repeated every heartbeat, so a late one learns it
                // within one. A worker says ready only after it heard one: its SUB is live by then.
                // [HWM] At a subscriber's high-water mark (1000 messages) PUB drops instead of
                // blocking: a lost heartbeat is only a late one.
                control.SendFrame(state);
                nextBeat = now + heartbeat;
            }
        }
        Contract.Emit("done", new { orders = books.Counted, total = books.Total });
    }

    // --- source ----------------------------------------------------------------------------------

    static void RunSource(SourceArgs args)
    {
        var deadline = new Deadline(args.Timeout);
        // [PUSH] Deals the orders round-robin to the workers connected when they are sent. At a
        // worker's high-water mark, or with no worker at all, it blocks (the mute state) and never
        // drops: SendWhenRoom polls for room instead.
        using var orders = new PushSocket();
        using var control = new SubscriberSocket();
        // Linger 0: we leave only on `finished`, once the sink has every result.
        orders.Options.Linger = TimeSpan.Zero;
        control.Options.Linger = TimeSpan.Zero;
        orders.Options.MaxMsgSize = MaxMessage; // PUSH sends, but it still decodes what the peer says
        control.Options.MaxMsgSize = MaxMessage;
        // [SUB] A prefix filter on frame 0, subscribed before it connects: "" takes every control
        // message; it receives nothing it did not subscribe to.
        control.SubscribeToAnyTopic();
        using var ordersMonitor = SocketMonitor.Attach(orders, "orders", args.Monitor);
        using var controlMonitor = SocketMonitor.Attach(control, "control", args.Monitor);
        Sockets.Bind(orders, args.Orders);
        Sockets.Connect(control, args.Control);
        Contract.Emit("ready", new { orders = orders.Options.LastEndpoint });

        // The next control message, or null after a second without one: a poll of the SUB (the source
        // has no timer), never past the deadline, then a receive that does not wait.
        List<byte[]>? NextControl()
        {
            if (control.PollIn(deadline.Cap(TimeSpan.FromSeconds(1))))
                return control.ReceiveIfReady();
            if (deadline.Expired)
                throw new Failure("timeout", $"not finished after {args.Timeout} ms");
            return null;
        }

        void Send(ulong id) => orders.SendWhenRoom(OrderFrames(Generate(args.Seed, id)), deadline, $"order {id}");

        // The sink repeats its state every heartbeat: however late our SUB connected, `go` comes.
        while (!IsState(NextControl(), Go))
        {
        }
        for (ulong id = 1; id <= (ulong)args.Count; id++)
            Send(id);
        Contract.Emit("sent", new { orders = args.Count });
        long sent = args.Count;
        List<byte[]>? message;
        while (!IsState(message = NextControl(), Finished))
        {
            if (message is [var head, .. var rest] && head.AsSpan().SequenceEqual(Resend))
            {
                // The ids of our orders, 8 bytes each; anything else is no order of ours: ignored.
                var ids = rest.Where(frame => frame.Length == 8).Select(frame => BinaryPrimitives.ReadUInt64BigEndian(frame))
                    .Where(id => id >= 1 && id <= (ulong)args.Count).ToList();
                foreach (ulong id in ids)
                    Send(id); // the same bytes as the first time: the generator is a pure function
                sent += ids.Count;
                Contract.Emit("resent", new { ids });
            }
        }
        Contract.Emit("done", new { sent });
    }

    // --- worker ----------------------------------------------------------------------------------

    /// <summary>The first broken rule of an order, as (code, reason), or null and the order when it is good.</summary>
    static (string Code, string Reason)? CheckOrder(List<byte[]> frames, out Order order)
    {
        order = default;
        if (frames is not [{ Length: 8 }, { Length: >= 1 and <= 8 }, { Length: 1 }, { Length: 4 }, { Length: 8 }])
            return ("malformed-order", $"frame sizes {Sizes(frames)}, expected [8, 1-8, 1, 4, 8]");
        if (frames[1].AsSpan().ContainsAnyExceptInRange((byte)'A', (byte)'Z') || frames[2][0] is not ((byte)'B' or (byte)'S'))
        {
            // Non-ASCII bytes show as '?': the reason is for people.
            return ("malformed-order", $"symbol \"{Encoding.ASCII.GetString(frames[1])}\" or side \"{Encoding.ASCII.GetString(frames[2])}\"");
        }
        uint quantity = BinaryPrimitives.ReadUInt32BigEndian(frames[3]);
        long cents = BinaryPrimitives.ReadInt64BigEndian(frames[4]);
        if (quantity is < 1 or > 1000 || cents is < 100 or > 100099) // so that no value can overflow
            return ("malformed-order", $"quantity {quantity} or price {cents} cents out of range");
        order = new(
            BinaryPrimitives.ReadUInt64BigEndian(frames[0]), Encoding.ASCII.GetString(frames[1]), (char)frames[2][0],
            quantity, cents);
        return null;
    }

    static void RunWorker(WorkerArgs args)
    {
        var deadline = new Deadline(args.Timeout);
        using var orders = new PullSocket();
        using var results = new PushSocket();
        using var control = new SubscriberSocket();
        // Linger 0: we leave only on `finished`, once the sink has every result, ours included.
        orders.Options.Linger = TimeSpan.Zero;
        results.Options.Linger = TimeSpan.Zero;
        control.Options.Linger = TimeSpan.Zero;
        orders.Options.MaxMsgSize = MaxMessage;
        results.Options.MaxMsgSize = MaxMessage; // PUSH sends, but it still decodes what the peer says
        control.Options.MaxMsgSize = MaxMessage;
        control.SubscribeToAnyTopic(); // before connect: every control message
        using var ordersMonitor = SocketMonitor.Attach(orders, "orders", args.Monitor);
        using var resultsMonitor = SocketMonitor.Attach(results, "results", args.Monitor);
        using var controlMonitor = SocketMonitor.Attach(control, "control", args.Monitor);
        // PULL first: it should be connected long before the source deals the batch, or PUSH's
        // round-robin would leave us out of it.
        Sockets.Connect(orders, args.Orders);
        Sockets.Connect(results, args.Results);
        Sockets.Connect(control, args.Control);

        // Slow joiner: once one control message has arrived, our SUB is live and no later one can be
        // missed. The sink repeats its state every heartbeat, so one comes.
        List<byte[]>? first = null;
        while (first is null)
        {
            if (deadline.Expired)
                throw new Failure("timeout", "no control message from the sink");
            first = control.PollIn(deadline.Cap(TimeSpan.FromSeconds(1))) ? control.ReceiveIfReady() : null;
        }
        bool finished = IsState(first, Finished);
        byte[] name = Encoding.UTF8.GetBytes(args.Name);
        byte[][] hello = [Ready, name];
        results.SendWhenRoom(hello, deadline, "ready");
        Contract.Emit("ready", new { name = args.Name });

        var both = Sockets.PollIn([orders, control]);
        var controlOnly = Sockets.PollIn([control]);
        var clock = Stopwatch.StartNew();
        TimeSpan nextOrder = clock.Elapsed; // --rate: when the next order may be taken
        int count = 0;
        while (!finished)
        {
            if (deadline.Expired)
                throw new Failure("timeout", $"not finished after {args.Timeout} ms");
            // [poll] Both sockets at once, a second at most (no timer but --rate's), never past the
            // deadline: no busy loop, then receives that do not wait, one message per ready socket,
            // in the protocol's order: orders, then control. With --rate R, until the next order is
            // due the SUB alone is polled: `finished` is still heard, and orders wait in the PULL's
            // queue. NetMQPoller would call a handler per socket instead; the loop is the same.
            TimeSpan untilOrder = Until(nextOrder, clock);
            var ready = args.Rate > 0 && untilOrder > TimeSpan.Zero
                ? Sockets.Poll(controlOnly, deadline.Cap(untilOrder))
                : Sockets.Poll(both, deadline.Cap(TimeSpan.FromSeconds(1)));
            if (ready.Contains(orders) && orders.ReceiveIfReady() is { } frames)
            {
                if (CheckOrder(frames, out Order order) is (string code, string reason))
                {
                    Contract.Emit("error", new { code, reason });
                }
                else
                {
                    results.SendWhenRoom([Result, name, U64(order.Id), I64(order.Value)], deadline, $"the result of order {order.Id}");
                    count++;
                    Contract.Emit("priced", new { id = order.Id });
                    if (args.Rate > 0)
                        nextOrder = clock.Elapsed + TimeSpan.FromSeconds(1.0 / args.Rate);
                }
            }
            // States and resends come here; resends are the source's business.
            if (ready.Contains(control) && control.ReceiveIfReady() is { } state)
            {
                finished = IsState(state, Finished);
                if (IsState(state, Waiting)) // a sink waiting for its workers, a restarted one too: ready again
                    results.SendWhenRoom(hello, deadline, "ready");
            }
        }
        Contract.Emit("done", new { priced = count });
    }
}
