// query: a key-value engine and its facades over RFC 12/CHP (examples/query/PROTOCOL.md).
//
// The engine combines three patterns on three sockets: ROUTER answers snapshot requests, XPUB
// publishes updates, SUB collects writes; a fourth socket, SUB, takes ticks from example 2's
// publisher. A facade asks for snapshots on a DEALER, follows updates on a SUB and writes on an XPUB.
using System.Buffers.Binary;
using System.CommandLine;
using System.Diagnostics;
using System.Security.Cryptography;
using System.Text;
using System.Text.RegularExpressions;
using NetMQ;
using NetMQ.Sockets;

static class Query
{
    // [max size] 1024 bytes per frame (NetMQ Options.MaxMsgSize) on every socket, set before bind or
    // connect. The largest legal frame is a 256-byte value (a key, a subtree, properties or a routing
    // id: 255); between 257 and 1024 bytes it reaches us and is reported, above that NetMQ drops it
    // together with the connection that sent it.
    internal const long MaxMessage = 1024;
    internal const int MaxValue = 256;
    const int MaxFrames = 7; // frames kept of a message (5, a routing id, and one to tell "more"); the rest are dropped

    // \A and \z, not ^ and $: in .NET, $ also matches before a final "\n".
    static readonly Regex Key = new(@"\A(/[A-Za-z0-9._-]+)+\z");
    static readonly Regex Subtree = new(@"\A(/[A-Za-z0-9._-]+)+/\z");
    static readonly Regex Properties = new(@"\A(?:([A-Za-z0-9_-]{1,32})=([\x20-\x7e]*)\n)*\z");
    static readonly Regex Ttl = new(@"\A[1-9][0-9]{0,4}\z");
    static readonly Regex Segment = new(@"\A[A-Za-z0-9_-]{1,32}\z");

    // The longest poll: a role looks at its stop flag and its deadline at least this often.
    static readonly TimeSpan Tenth = TimeSpan.FromMilliseconds(100);

    internal static readonly byte[] Icanhaz = "ICANHAZ?"u8.ToArray(), Kthxbai = "KTHXBAI"u8.ToArray(), Hugz = "HUGZ"u8.ToArray();

    record EngineArgs(
        string Snapshot, string Updates, string Collector, string Ticks, string Name, List<string> Symbols,
        int Hugz, int MaxKeys, int Timeout, bool Monitor);

    record FacadeArgs(
        string Snapshot, string Updates, string Collector, string Name, List<string> Subtrees,
        int Count, int Writes, int Ttl, int Silence, int Timeout, bool Monitor);

    record DeriveArgs(string Symbol, List<byte[]> Prices, ulong Sequence);

    public static Command Command() => new("query", "a key-value engine and its facades over RFC 12/CHP")
    {
        EngineCommand(), FacadeCommand(), DeriveCommand(),
    };

    static Command EngineCommand()
    {
        Option<string> snapshot = Flags.Endpoint("--snapshot", "tcp://127.0.0.1:5556");
        Option<string> updates = Flags.Endpoint("--updates", "tcp://127.0.0.1:5557");
        Option<string> collector = Flags.Endpoint("--collector", "tcp://127.0.0.1:5558");
        Option<string> ticks = Flags.Endpoint("--ticks", "");
        Option<string> name = Flags.Typed<string>(
            "--name", $"takes 1 to {Flags.MaxName} bytes of UTF-8", TryParseName, () => "engine");
        Option<List<string>> symbols = Flags.Typed<List<string>>(
            "--symbols", Ticker.SymbolsRule, Ticker.TryParseSymbols, () => ["AAPL", "GOOG", "GOOGL", "MSFT", "IBM"]);
        Option<int> hugz = Flags.AtLeast("--hugz", 1, 1000);
        Option<int> maxKeys = Flags.AtLeast("--max-keys", 1, 10000);
        Option<int> timeout = Flags.AtLeast("--timeout", 0, 0);
        Option<string> monitor = Flags.Monitor();
        Command engine = new("engine", "keep the map, serve snapshots, publish updates")
        {
            snapshot, updates, collector, ticks, name, symbols, hugz, maxKeys, timeout, monitor,
        };
        engine.SetAction(p => RunEngine(new(
            p.GetValue(snapshot)!, p.GetValue(updates)!, p.GetValue(collector)!, p.GetValue(ticks)!,
            p.GetValue(name)!, p.GetValue(symbols)!, p.GetValue(hugz), p.GetValue(maxKeys), p.GetValue(timeout),
            p.GetValue(monitor) == "on")));
        return engine;
    }

    static Command FacadeCommand()
    {
        Option<string> snapshot = Flags.Endpoint("--snapshot", "tcp://127.0.0.1:5556");
        Option<string> updates = Flags.Endpoint("--updates", "tcp://127.0.0.1:5557");
        Option<string> collector = Flags.Endpoint("--collector", "tcp://127.0.0.1:5558");
        Option<string> name = Flags.Typed<string>("--name", "a facade name is 1 to 32 of A-Z a-z 0-9 _ -", TryParseSegment);
        Option<List<string>> subtrees = Flags.Typed<List<string>>(
            "--subtrees", "takes distinct subtrees like /prices/ (or all), separated by ','", TryParseSubtrees);
        Option<int> count = Flags.AtLeast("--count", 1, 100);
        Option<int> writes = Flags.AtLeast("--writes", 0, 0);
        Option<int> ttl = Flags.Typed<int>("--ttl", "a ttl is 1 to 86400 seconds", TryParseTtl, () => 1);
        Option<int> silence = Flags.AtLeast("--silence", 1, 3000);
        Option<int> timeout = Flags.AtLeast("--timeout", 0, 30000);
        Option<string> monitor = Flags.Monitor();
        Command facade = new("facade", "mirror some subtrees of the engine's map, and write to it")
        {
            snapshot, updates, collector, name, subtrees, count, writes, ttl, silence, timeout, monitor,
        };
        facade.SetAction(p => RunFacade(new(
            p.GetValue(snapshot)!, p.GetValue(updates)!, p.GetValue(collector)!, p.GetValue(name)!,
            p.GetValue(subtrees)!, p.GetValue(count), p.GetValue(writes), p.GetValue(ttl), p.GetValue(silence),
            p.GetValue(timeout), p.GetValue(monitor) == "on")));
        return facade;
    }

    static Command DeriveCommand()
    {
        Option<string> symbol = Flags.Typed<string>("--symbol", Ticker.SymbolRule, Ticker.TryParseSymbol);
        Option<List<byte[]>> prices = Flags.Typed<List<byte[]>>("--prices", "prices are 8-byte binary64 values in hex", TryParsePrices);
        Option<ulong> sequence = Flags.UInt64("--sequence", 0);
        Command derive = new("derive", "print the KVPUBs some ticks make (the test vectors)") { symbol, prices, sequence };
        derive.SetAction(p => RunDerive(new(p.GetValue(symbol)!, p.GetValue(prices)!, p.GetValue(sequence))));
        return derive;
    }

    // --- flag types ------------------------------------------------------------------------------

    static bool TryParseName(string text, out string name)
    {
        name = text;
        return Encoding.UTF8.GetByteCount(text) is >= 1 and <= Flags.MaxName;
    }

    internal static bool TryParseSegment(string text, out string name)
    {
        name = text;
        return Segment.IsMatch(text);
    }

    /// <summary>Comma-separated subtrees, each once; <c>all</c> is the empty subtree, the whole map (an
    /// empty item is an error).</summary>
    internal static bool TryParseSubtrees(string text, out List<string> trees)
    {
        string[] parts = text.Split(',');
        trees = [.. parts.Select(part => part == "all" ? "" : part)];
        return parts.All(part => part == "all" || (part != "" && IsSubtree(Encoding.UTF8.GetBytes(part))))
            && trees.Distinct().Count() == trees.Count;
    }

    static bool TryParseTtl(string text, out int seconds) =>
        int.TryParse(text, out seconds) && seconds is >= 1 and <= 86400;

    static bool TryParsePrices(string text, out List<byte[]> prices)
    {
        prices = [];
        foreach (string part in text.Split(','))
        {
            try { prices.Add(Convert.FromHexString(part)); }
            catch (FormatException) { return false; }
        }
        return prices.All(price => price.Length == 8);
    }

    // --- the protocol's pieces -------------------------------------------------------------------

    // Latin-1 turns each byte into one character: a byte above 0x7F can never match a pattern.
    internal static bool IsKey(byte[] data) => data.Length is >= 2 and <= 255 && Key.IsMatch(Encoding.Latin1.GetString(data));

    static bool IsSubtree(byte[] data) =>
        data.Length == 0 || (data.Length <= 255 && Subtree.IsMatch(Encoding.Latin1.GetString(data)));

    /// <summary>The <c>ttl</c> property in seconds, 0 for none, or null when the properties are not
    /// <c>name=value\n</c> lines or hold a ttl that is not one decimal number of 1 to 86400.</summary>
    static int? TtlOf(byte[] data)
    {
        if (data.Length > 255 || Properties.Match(Encoding.Latin1.GetString(data)) is not { Success: true } lines)
            return null;
        // The group of a repeated pattern keeps every capture: one name and one value per line.
        var ttls = lines.Groups[1].Captures.Zip(lines.Groups[2].Captures)
            .Where(line => line.First.Value == "ttl").Select(line => line.Second.Value).ToList();
        return ttls switch
        {
            [] => 0,
            [var ttl] when Ttl.IsMatch(ttl) && int.Parse(ttl) <= 86400 => int.Parse(ttl),
            _ => null,
        };
    }

    /// <summary>Why a KVSYNC, KVPUB or KVSET (5 frames) is malformed, or null.</summary>
    static string? CheckKv(List<byte[]> frames)
    {
        if (frames.Count != 5)
            return $"expected 5 frames, got {frames.Count}{(frames.Count == MaxFrames ? " or more" : "")}";
        if (!IsKey(frames[0]))
            return $"not a key: {Quote(frames[0])}";
        if (frames[1].Length != 8)
            return $"a sequence of {frames[1].Length} bytes, not 8";
        if (frames[2].Length is not (0 or 16))
            return $"a UUID of {frames[2].Length} bytes, not 0 or 16";
        if (TtlOf(frames[3]) is null)
            return $"properties that are not name=value lines with at most one ttl of 1 to 86400: {Quote(frames[3])}";
        if (frames[4].Length > MaxValue)
            return $"a value of {frames[4].Length} bytes, more than {MaxValue}";
        return null;
    }

    /// <summary>At most 32 bytes of what a peer sent, for an error's reason: printable ASCII as it is,
    /// any other byte as \xNN.</summary>
    internal static string Quote(byte[] data) =>
        "\"" + string.Concat(data.Take(32).Select(b => b is >= 0x20 and < 0x7f and not (byte)'"' and not (byte)'\\'
            ? $"{(char)b}" : $"\\x{b:x2}")) + "\"";

    /// <summary>A message for a reason: its frame sizes, and at most 32 bytes of its first frame.</summary>
    static string Shape(List<byte[]> frames) =>
        $"[{string.Join(", ", frames.Select(frame => frame.Length))}] bytes, beginning {Quote(frames[0])}";

    static byte[] Seq(ulong number)
    {
        var frame = new byte[8];
        BinaryPrimitives.WriteUInt64BigEndian(frame, number); // 8 bytes, big-endian (network order)
        return frame;
    }

    /// <summary>A KVSET: key, sequence (8 zero bytes: no meaning), empty UUID, the ttl property if any, value.</summary>
    internal static byte[][] KvsetFrames(string key, byte[] value, int ttl) =>
        [Bytes(key), Seq(0), [], ttl > 0 ? Bytes($"ttl={ttl}\n") : [], value];

    internal static bool Is(byte[] frame, byte[] command) => frame.AsSpan().SequenceEqual(command);

    // Keys and subtrees are checked ASCII before they become strings; compare them ordinally, always.
    internal static string Text(byte[] data) => Encoding.ASCII.GetString(data);

    internal static byte[] Bytes(string text) => Encoding.ASCII.GetBytes(text);

    /// <summary>The message a poll reported, read frame by frame without waiting: at most
    /// <see cref="MaxFrames"/> frames are kept (the rest are read and dropped), so no message can make us
    /// allocate without bound. Null if there was nothing after all (POLLIN is a hint).</summary>
    internal static List<byte[]>? ReceiveMessage(NetMQSocket socket)
    {
        if (!socket.TryReceiveFrameBytes(TimeSpan.Zero, out byte[]? first, out bool more))
            return null;
        var frames = new List<byte[]> { first };
        // [multipart] A message arrives whole or not at all: its other frames came with the first, so
        // reading them cannot wait. How many there are is the peer's choice: CheckKv counts them.
        while (more)
        {
            byte[] frame = socket.ReceiveFrameBytes(out more);
            if (frames.Count < MaxFrames)
                frames.Add(frame);
        }
        return frames;
    }

    // --- the map fed by ticks --------------------------------------------------------------------

    /// <summary>floor(price x 100 + 0.5): two binary64 operations and an exact floor; null if unusable.</summary>
    static long? TickCents(double price)
    {
        if (!double.IsFinite(price) || price is < 0 or > 1e9)
            return null;
        double scaled = price * 100; // two roundings: .NET never fuses a multiply and an add by itself
        return (long)Math.Floor(scaled + 0.5);
    }

    static byte[] Decimal(long cents) => Bytes($"{cents / 100}.{cents % 100:D2}");

    /// <summary>The four derived keys of one tick and their new values; <paramref name="stats"/> keeps,
    /// per symbol, the highest and lowest price in cents and the number of ticks.</summary>
    static (string Key, byte[] Value)[] Derived(Dictionary<string, (long High, long Low, long Count)> stats, string symbol, long cents)
    {
        var (high, low, count) = stats.GetValueOrDefault(symbol, (cents, cents, 0));
        (high, low, count) = (Math.Max(high, cents), Math.Min(low, cents), count + 1);
        stats[symbol] = (high, low, count);
        return
        [
            ($"/prices/{symbol}", Decimal(cents)),
            ($"/stats/{symbol}/high", Decimal(high)),
            ($"/stats/{symbol}/low", Decimal(low)),
            ($"/stats/{symbol}/ticks", Bytes($"{count}")),
        ];
    }

    static void RunDerive(DeriveArgs args)
    {
        var values = new Dictionary<string, byte[]>();
        var stats = new Dictionary<string, (long High, long Low, long Count)>();
        ulong sequence = args.Sequence;
        foreach (byte[] price in args.Prices)
        {
            if (TickCents(BinaryPrimitives.ReadDoubleBigEndian(price)) is not long cents)
                throw new Failure("malformed-tick", $"price {Convert.ToHexStringLower(price)} cannot be cents");
            foreach (var (key, value) in Derived(stats, args.Symbol, cents))
            {
                if (values.TryGetValue(key, out byte[]? old) && Is(old, value))
                    continue; // only what changes is an update
                values[key] = value;
                sequence++;
                byte[][] frames = [Encoding.UTF8.GetBytes(key), Seq(sequence), [], [], value];
                Contract.Emit("encoded", new { frames = frames.Select(Convert.ToHexStringLower).ToArray() });
            }
        }
        Contract.Emit("done");
    }

    // --- engine ----------------------------------------------------------------------------------

    /// <summary>The map (key -> (value, sequence)), its expiries and its sockets' replies.</summary>
    sealed class Engine(RouterSocket snapshots, XPublisherSocket updates, int maxKeys)
    {
        readonly Dictionary<string, (byte[] Value, ulong Sequence)> map = [];
        readonly Dictionary<string, TimeSpan> expiries = [];
        readonly Dictionary<string, (long High, long Low, long Count)> stats = [];
        readonly Stopwatch clock = Stopwatch.StartNew();
        public ulong Sequence { get; private set; }
        public int Keys => map.Count;
        public int Served { get; private set; }
        public int Abandoned { get; private set; }
        TimeSpan lastHugz; // a HUGZ goes out every --hugz ms from the last one, busy or not
        readonly byte[] uuid = RandomNumberGenerator.GetBytes(16); // who we are: an engine started again draws another

        /// <summary>One update: the next sequence, the map, the KVPUB to every subscriber, the event.</summary>
        void Update(string key, byte[] value, string cause, byte[]? uuid = null, byte[]? props = null)
        {
            Sequence++;
            if (value.Length > 0)
                map[key] = (value, Sequence);
            else
                map.Remove(key);
            expiries.Remove(key);
            // XPUB, like PUB, never blocks: a subscriber whose queue is full (the high-water mark) misses it.
            updates.SendMultipartBytes(Bytes(key), Seq(Sequence), uuid ?? [], props ?? [], value);
            Contract.Emit("update", new { sequence = Sequence, key, value = Convert.ToHexStringLower(value), cause });
        }

        /// <summary>The RFC's HUGZ carries 0 and no UUID; ours the sequence of our last update (0 before
        /// the first), as the Guide's clonesrv, and our UUID: a facade knows when the engine it hears is
        /// not the one it synced with.</summary>
        public void SendHugz()
        {
            updates.SendMultipartBytes(Hugz, Seq(Sequence), uuid, [], []);
            lastHugz = clock.Elapsed;
        }

        public void OnIcanhaz(List<byte[]> frames)
        {
            if (frames.Count != 3 || !Is(frames[1], Icanhaz) || !IsSubtree(frames[2]))
            {
                Contract.Emit("error", new { code = "malformed-icanhaz", reason = $"not [ICANHAZ?, subtree]: {Shape(frames.Count > 1 ? frames[1..] : [[]])}" });
                return;
            }
            // Frame 0 is the routing id ROUTER put in front: our replies go back by it.
            byte[] identity = frames[0];
            string subtree = Text(frames[2]);
            var keys = map.Keys.Where(key => key.StartsWith(subtree, StringComparison.Ordinal)).Order(StringComparer.Ordinal).ToList();
            for (int sent = 0; sent < keys.Count; sent++)
            {
                var (value, sequence) = map[keys[sent]];
                if (SendTo(identity, [Bytes(keys[sent]), Seq(sequence), [], [], value]) is string why)
                {
                    Abandon(subtree, sent, why);
                    return;
                }
            }
            ulong highest = keys.Select(key => map[key].Sequence).DefaultIfEmpty().Max();
            if (SendTo(identity, [Kthxbai, Seq(highest), [], [], frames[2]]) is string whyNot)
            {
                Abandon(subtree, keys.Count, whyNot);
                return;
            }
            Served++;
            Contract.Emit("snapshot", new { subtree, keys = keys.Count, sequence = highest, at = Sequence });
        }

        /// <summary>Send to one peer through ROUTER, without waiting. With ROUTER_MANDATORY the first frame
        /// fails when the peer is gone (NetMQ throws) or its queue is full (TrySend returns false),
        /// instead of being dropped in silence; once it is accepted, the others always are. Null when it
        /// went out.</summary>
        string? SendTo(byte[] identity, byte[][] frames)
        {
            try
            {
                return snapshots.TrySendMultipartBytes(TimeSpan.Zero, frames.Prepend(identity)) ? null : "full";
            }
            catch (HostUnreachableException)
            {
                return "gone";
            }
        }

        void Abandon(string subtree, int sent, string why)
        {
            Abandoned++;
            Contract.Emit("abandoned", new { subtree, keys = sent, why });
        }

        public void OnKvset(List<byte[]> frames)
        {
            if (CheckKv(frames) is string problem)
            {
                Contract.Emit("error", new { code = "malformed-kvset", reason = problem });
                return;
            }
            string key = Text(frames[0]);
            byte[] value = frames[4];
            if (value.Length > 0 && !map.ContainsKey(key) && map.Count >= maxKeys)
            {
                Contract.Emit("error", new { code = "map-full", reason = $"{Quote(frames[0])} would be key {maxKeys + 1}" });
                return;
            }
            Update(key, value, "kvset", frames[2], frames[3]);
            if (TtlOf(frames[3]) is int ttl and > 0 && value.Length > 0)
                expiries[key] = clock.Elapsed + TimeSpan.FromSeconds(ttl);
        }

        public void OnTick(List<byte[]> frames, List<string> symbolsWanted)
        {
            // A tick as examples/ticker/PROTOCOL.md has it: [symbol NUL, sequence, timestamp, price].
            if (frames.Count != 4 || !Ticker.IsTopic(frames[0]) || frames.Skip(1).Any(frame => frame.Length != 8))
            {
                Contract.Emit("error", new { code = "malformed-tick", reason = $"not a tick: {Shape(frames)}" });
                return;
            }
            string symbol = Text(frames[0][..^1]);
            long? cents = TickCents(BinaryPrimitives.ReadDoubleBigEndian(frames[3]));
            if (!symbolsWanted.Contains(symbol) || cents is null)
            {
                Contract.Emit("error", new
                {
                    code = "malformed-tick",
                    reason = $"{symbol}: not subscribed, or price {Convert.ToHexStringLower(frames[3])} cannot be cents",
                });
                return;
            }
            foreach (var (key, value) in Derived(stats, symbol, cents.Value))
            {
                if (!(map.TryGetValue(key, out var entry) && Is(entry.Value, value)))
                    Update(key, value, "tick"); // only what changes is an update
            }
        }

        public void OnSubscription(byte[] frame)
        {
            if (frame.Length == 0 || frame[0] > 1)
                Contract.Emit("error", new { code = "malformed-subscription", reason = $"not a subscription: {Quote(frame)}" });
            else if (frame[0] == 1 && Hugz.AsSpan().StartsWith(frame.AsSpan(1)))
            {
                // [slow joiner] A subscription reaches us some time after the facade subscribed; what
                // we publish before that is lost for it. A subscription to a prefix of HUGZ is
                // answered with a HUGZ at once: once it arrives, every earlier subscription is live.
                SendHugz();
            }
        }

        /// <summary>Delete every key whose time has come, in order of expiry time, then key; and send a
        /// HUGZ every <paramref name="hugzMs"/> ms, whatever else was published: a facade that hears
        /// nothing knows we are gone.</summary>
        public void OnTimers(int hugzMs)
        {
            TimeSpan now = clock.Elapsed;
            var due = expiries.Where(expiry => expiry.Value <= now)
                .OrderBy(expiry => expiry.Value).ThenBy(expiry => expiry.Key, StringComparer.Ordinal).ToList();
            foreach (var (key, _) in due)
                Update(key, [], "expired");
            if (now - lastHugz >= TimeSpan.FromMilliseconds(hugzMs))
                SendHugz();
        }

        /// <summary>The time to the next HUGZ or expiry, rounded up to a whole millisecond.</summary>
        public TimeSpan NextTimer(int hugzMs)
        {
            TimeSpan due = expiries.Values.Append(lastHugz + TimeSpan.FromMilliseconds(hugzMs)).Min();
            return TimeSpan.FromMilliseconds(Math.Max(0, (long)(due - clock.Elapsed).TotalMilliseconds + 1));
        }
    }

    static void RunEngine(EngineArgs args)
    {
        using var stop = new StopSignal();
        var deadline = new Deadline(args.Timeout);
        // [ROUTER] Every request arrives with the routing id of its peer in front, and every reply is
        // routed by the routing id we put in front; what it cannot route it drops in silence, unless
        // MANDATORY: then the send fails, and the engine abandons that snapshot.
        using var snapshots = new RouterSocket();
        snapshots.Options.RouterMandatory = true;
        // [HWM] Room for a whole snapshot per peer: NetMQ learns that a peer has read its messages only
        // in batches, so a loop of sends would find 1000 (the default high-water mark) "full" at once.
        // At the mark a MANDATORY ROUTER's send fails (TrySend returns false) instead of blocking.
        snapshots.Options.SendHighWatermark = Math.Min(args.MaxKeys, int.MaxValue - 1) + 1;
        // [XPUB] A PUB on the wire that hands us every subscription as a message (first byte 1 or 0);
        // verbose: repeats included, so each subscription to HUGZ is answered (the slow joiner).
        using var updates = new XPublisherSocket();
        updates.Options.XPubVerbose = true;
        using var collector = new SubscriberSocket(); // the facades' writes: subscribed to everything
        collector.SubscribeToAnyTopic();
        using var ticks = args.Ticks != "" ? new SubscriberSocket() : null;
        NetMQSocket?[] sockets = [snapshots, updates, collector, ticks];
        foreach (NetMQSocket socket in sockets.OfType<NetMQSocket>())
        {
            // [linger] 0: at the stop nothing still queued is owed to anyone (a facade resyncs from a
            // new engine anyway); closing drops it.
            socket.Options.Linger = TimeSpan.Zero;
            socket.Options.MaxMsgSize = MaxMessage; // before bind or connect
        }
        using var snapshotMonitor = SocketMonitor.Attach(snapshots, "snapshot", args.Monitor);
        using var updatesMonitor = SocketMonitor.Attach(updates, "updates", args.Monitor);
        using var collectorMonitor = SocketMonitor.Attach(collector, "collector", args.Monitor);
        using var ticksMonitor = ticks is null ? null : SocketMonitor.Attach(ticks, "ticks", args.Monitor);
        Sockets.Bind(snapshots, args.Snapshot);
        Sockets.Bind(updates, args.Updates);
        Sockets.Bind(collector, args.Collector);
        if (ticks is not null)
        {
            Sockets.Connect(ticks, args.Ticks);
            // [SUB] A prefix filter on frame 0, subscribed once connected, in this order: the symbols
            // first, then the @name the publisher counts (made before a connect, subscriptions go out
            // sorted by bytes, "@" first); it receives no tick of another symbol.
            foreach (string symbol in args.Symbols)
                ticks.Subscribe(Ticker.Topic(symbol));
            ticks.Subscribe(Encoding.UTF8.GetBytes("@" + args.Name));
        }
        Contract.Emit("ready", new
        {
            snapshot = snapshots.Options.LastEndpoint, updates = updates.Options.LastEndpoint,
            collector = collector.Options.LastEndpoint,
        });

        var engine = new Engine(snapshots, updates, args.MaxKeys);
        var items = Sockets.PollIn(sockets);
        while (!stop.Raised)
        {
            if (deadline.Expired)
                throw new Failure("timeout", $"still serving after {args.Timeout} ms");
            // [poll] The four sockets at once, up to the next timer (a HUGZ or an expiry), or a tenth of
            // a second so that the stop flag is seen soon, never past the deadline. Then receives that
            // do not wait (POLLIN is a hint), one message from each ready socket, in the protocol's
            // order: a flood on one cannot starve the others. No EINTR reaches a .NET poll (StopSignal).
            TimeSpan wait = engine.NextTimer(args.Hugz);
            var ready = Sockets.Poll(items, deadline.Cap(wait < Tenth ? wait : Tenth));
            if (ready.Contains(snapshots) && ReceiveMessage(snapshots) is { } request)
                engine.OnIcanhaz(request);
            // One frame at a time, whatever its "more" flag: each is one subscription.
            if (ready.Contains(updates) && updates.ReceiveFrameIfReady() is { } subscription)
                engine.OnSubscription(subscription);
            if (ready.Contains(collector) && ReceiveMessage(collector) is { } kvset)
                engine.OnKvset(kvset);
            if (ticks is not null && ready.Contains(ticks) && ReceiveMessage(ticks) is { } tick)
                engine.OnTick(tick, args.Symbols);
            engine.OnTimers(args.Hugz);
        }
        Contract.Emit("done", new { sequence = engine.Sequence, keys = engine.Keys, snapshots = engine.Served, abandoned = engine.Abandoned });
    }

    // --- facade ----------------------------------------------------------------------------------

    /// <summary>The facade's map and what it still waits for; the desk's query agent (Desk.cs) keeps one too.</summary>
    internal sealed class Facade
    {
        readonly List<string> subtrees;
        readonly int count;
        readonly Report report;
        public readonly Dictionary<string, byte[]> Map = [];
        public readonly List<string> Waiting; // subtrees asked for, whose KTHXBAI is not in yet
        readonly Dictionary<string, ulong> watermark = []; // subtree -> its KTHXBAI's sequence
        readonly Dictionary<string, int> syncedKeys;
        public ulong First { get; private set; }
        public ulong Last { get; private set; }
        public int Applied { get; private set; }
        public int Discarded { get; private set; }
        readonly bool seesOwn;
        public readonly List<(string Key, byte[] Value)> Writes; // /facades/NAME/N = NAME/N, N = 1...
        public readonly HashSet<string> Echoed = [];
        readonly HashSet<string> expired = [];
        bool deleted;
        public bool DeleteSent;

        /// <summary>A facade of <paramref name="subtrees"/>, done after <paramref name="count"/> KVPUBs and
        /// <paramref name="writes"/> writes of its own (0: none), that reports through <paramref name="report"/>.</summary>
        public Facade(string name, List<string> subtrees, int count, int writes, Report report)
        {
            this.subtrees = subtrees;
            this.count = count;
            this.report = report;
            Waiting = [.. subtrees];
            syncedKeys = subtrees.ToDictionary(tree => tree, _ => 0);
            string prefix = $"/facades/{name}/";
            seesOwn = subtrees.Any(tree => prefix.StartsWith(tree, StringComparison.Ordinal));
            Writes = [.. Enumerable.Range(1, writes).Select(n => (prefix + n, Bytes($"{name}/{n}")))];
        }

        public List<string> SubtreesOf(string key) => [.. subtrees.Where(tree => key.StartsWith(tree, StringComparison.Ordinal))];

        public void OnSnapshot(List<byte[]> frames)
        {
            if (Is(frames[0], Kthxbai))
            {
                if (frames.Count != 5 || frames[1].Length != 8 || !IsSubtree(frames[4]))
                {
                    report("error", new { code = "malformed-kthxbai", reason = $"not [KTHXBAI, sequence, -, -, subtree]: {Shape(frames)}" });
                }
                else if (!Waiting.Contains(Text(frames[4])))
                {
                    report("error", new { code = "unexpected-kthxbai", reason = $"no request waits for subtree {Quote(frames[4])}" });
                }
                else
                {
                    // Nothing but the subtree says which of our requests this answers.
                    string tree = Text(frames[4]);
                    Waiting.Remove(tree);
                    watermark[tree] = BinaryPrimitives.ReadUInt64BigEndian(frames[1]);
                    report("synced", new { subtree = tree, sequence = watermark[tree], keys = syncedKeys[tree] });
                }
                return;
            }
            string? problem = CheckKv(frames);
            if (problem is null && !Waiting.Any(tree => Text(frames[0]).StartsWith(tree, StringComparison.Ordinal)))
                problem = $"{Quote(frames[0])} is in no subtree still being sent";
            if (problem is not null)
            {
                report("error", new { code = "malformed-kvsync", reason = problem });
                return;
            }
            string key = Text(frames[0]);
            foreach (string tree in Waiting.Where(tree => key.StartsWith(tree, StringComparison.Ordinal)))
                syncedKeys[tree]++;
            Set(key, frames[4]);
        }

        void Set(string key, byte[] value)
        {
            if (value.Length > 0)
                Map[key] = value;
            else
                Map.Remove(key);
        }

        /// <summary>A message from the SUB: true when it was a KVPUB, and applied.</summary>
        public bool OnUpdate(List<byte[]> frames)
        {
            if (Is(frames[0], Hugz))
                return false; // a keep-alive: the engine is there
            string? problem = CheckKv(frames);
            List<string> trees = problem is null ? SubtreesOf(Text(frames[0])) : [];
            if (problem is not null || trees.Count == 0)
            {
                report("error", new
                {
                    code = problem is null ? "unexpected-key" : "malformed-kvpub",
                    reason = problem ?? $"{Quote(frames[0])} is in none of our subtrees",
                });
                return false;
            }
            string key = Text(frames[0]);
            ulong sequence = BinaryPrimitives.ReadUInt64BigEndian(frames[1]);
            byte[] value = frames[4];
            // The RFC's late-joiner rule: only what is newer than the snapshot, and than the last update.
            if (sequence <= trees.Max(tree => watermark[tree]) || sequence <= Last)
            {
                Discarded++;
                return false;
            }
            Set(key, value);
            if (First == 0)
                First = sequence;
            Last = sequence;
            Applied++;
            int n = Writes.FindIndex(write => write.Key == key);
            if (n >= 0 && Is(value, Writes[n].Value))
            {
                Echoed.Add(key);
            }
            else if (n >= 0 && value.Length == 0)
            {
                if (n == 0 && DeleteSent)
                    deleted = true;
                else if (Echoed.Contains(key))
                    expired.Add(key);
            }
            return true;
        }

        /// <summary>The fields of the facade's `done` (and of the desk's query agent's `stopped`).</summary>
        public object Summary() => new
        {
            sequence = Last, first = First,
            map = Map.OrderBy(entry => entry.Key, StringComparer.Ordinal)
                .ToDictionary(entry => entry.Key, entry => Convert.ToHexStringLower(entry.Value)),
            applied = Applied, discarded = Discarded,
        };

        public bool Finished()
        {
            if (Waiting.Count > 0 || Applied < count)
                return false;
            if (Last <= watermark.Values.DefaultIfEmpty().Max())
                return false;
            if (seesOwn && Writes.Count > 0)
            {
                var ttlKeys = Writes.Where((_, index) => index % 2 == 1).Select(write => write.Key); // N even
                return Echoed.Count == Writes.Count && deleted && ttlKeys.All(expired.Contains);
            }
            return true;
        }
    }

    /// <summary>The engine is gone or is a new one (PROTOCOL.md, "Restarts"): start over on new sockets.</summary>
    sealed class Restarted(string why, ulong last) : Exception(why)
    {
        public string Why => Message;
        public ulong Last => last; // the highest sequence read from the SUB, 0 if none
    }

    /// <summary>A facade's sockets, new and connected, and their monitors: what one session with one
    /// engine uses.</summary>
    sealed class FacadeSockets : IDisposable
    {
        // [DEALER] Sends and receives freely: requests go out several at a time, and replies come in
        // without REQ's lockstep and without an envelope of its own; the subtree in KTHXBAI says which
        // request a reply answers.
        public readonly DealerSocket Snapshot = new();
        // [SUB] A prefix filter on frame 0: one subscription per subtree, and HUGZ.
        public readonly SubscriberSocket Updates = new();
        // XPUB to the collector: a PUB that tells us when the collector's subscription has arrived.
        public readonly XPublisherSocket? Collector;
        readonly SocketMonitor?[] monitors;

        public FacadeSockets(FacadeArgs args)
        {
            Collector = args.Writes > 0 ? new XPublisherSocket() : null;
            foreach (NetMQSocket socket in All)
            {
                socket.Options.Linger = TimeSpan.Zero;
                socket.Options.MaxMsgSize = MaxMessage; // before connect
            }
            // [linger] 1 s on the collector XPUB: the last write (a delete) may still be queued when we
            // exit, and closing waits that long for it to leave; 0 on the others, which owe nothing.
            if (Collector is not null)
                Collector.Options.Linger = TimeSpan.FromSeconds(1);
            monitors =
            [
                SocketMonitor.Attach(Snapshot, "snapshot", args.Monitor),
                SocketMonitor.Attach(Updates, "updates", args.Monitor),
                Collector is null ? null : SocketMonitor.Attach(Collector, "collector", args.Monitor),
            ];
            try
            {
                Sockets.Connect(Updates, args.Updates);
                Sockets.Connect(Snapshot, args.Snapshot);
                if (Collector is not null)
                    Sockets.Connect(Collector, args.Collector);
            }
            catch
            {
                Dispose();
                throw;
            }
            // The subtrees, then HUGZ, once the SUB is connected: once a HUGZ arrives, every
            // subscription before it is in place (made before a connect, they would go out sorted).
            foreach (string tree in args.Subtrees)
                Updates.Subscribe(Bytes(tree));
            Updates.Subscribe(Hugz);
        }

        public NetMQSocket[] All => Collector is null ? [Snapshot, Updates] : [Snapshot, Updates, Collector];

        /// <summary>Close at once, for a restart: writes queued for a dead engine are worth nothing.</summary>
        public void Drop()
        {
            if (Collector is not null)
                Collector.Options.Linger = TimeSpan.Zero;
            Dispose();
        }

        /// <summary>The monitors first (the context waits for their sockets too), then the sockets.</summary>
        public void Dispose()
        {
            foreach (SocketMonitor? monitor in monitors)
                monitor?.Dispose();
            foreach (NetMQSocket socket in All)
                socket.Dispose();
        }
    }

    static void RunFacade(FacadeArgs args)
    {
        var deadline = new Deadline(args.Timeout);
        var sockets = new FacadeSockets(args);
        try
        {
            Contract.Emit("ready", new { name = args.Name, subtrees = args.Subtrees });
            Facade? facade = null;
            while (facade is null)
            {
                try
                {
                    facade = Follow(args, deadline, sockets);
                }
                catch (Restarted restart)
                {
                    // Start over on new sockets: the old ones may still hold the old engine's messages.
                    sockets.Drop();
                    Contract.Emit("resynced", new { why = restart.Why, last = restart.Last });
                    sockets = new FacadeSockets(args);
                }
            }
            Contract.Emit("done", facade.Summary());
        }
        finally
        {
            // NetMQ lingers in its own threads, and the usual exit (Program.cs) does not wait for them: close
            // the sockets and wait, so that a write still queued on the collector XPUB leaves (1 s at most).
            sockets.Dispose();
        }
        NetMQConfig.Cleanup(block: true);
    }

    /// <summary>One session with one engine: steps 2 to 6 of the facade. The finished facade; or
    /// <see cref="Restarted"/> thrown, when the engine turns out to be gone or new.</summary>
    static Facade Follow(FacadeArgs args, Deadline deadline, FacadeSockets sockets)
    {
        var (snapshot, updates, collector) = (sockets.Snapshot, sockets.Updates, sockets.Collector);
        var facade = new Facade(args.Name, args.Subtrees, args.Count, args.Writes, Contract.Emit);
        ulong seen = 0; // the highest sequence read from the SUB: HUGZ, and KVPUBs applied or discarded
        byte[]? engine = null; // the UUID in the HUGZ that started the session (empty from an RFC server)

        // Whether the SUB still hears the engine of this session: the same UUID in every HUGZ, and
        // sequences that only rise (every update above the HUGZ before it, every HUGZ at least the
        // updates before it). Anything else comes from another engine.
        void FollowEngine(List<byte[]> frames)
        {
            if (Is(frames[0], Hugz))
            {
                var (uuid, sequence) = frames is [_, { Length: 8 } number, var name, _, _]
                    ? (name, BinaryPrimitives.ReadUInt64BigEndian(number)) : ([], 0UL);
                if (engine is null)
                    engine = uuid;
                else if (!Is(uuid, engine))
                    throw new Restarted("engine", seen);
                if (sequence != 0 && sequence < seen) // 0: an RFC server's HUGZ, which says nothing
                    throw new Restarted("sequence", seen);
                seen = Math.Max(seen, sequence);
            }
            else if (CheckKv(frames) is null)
            {
                ulong sequence = BinaryPrimitives.ReadUInt64BigEndian(frames[1]);
                if (sequence <= seen)
                    throw new Restarted("sequence", seen);
                seen = sequence;
            }
        }

        // [slow joiner] Our subscriptions reach the engine some time after connect, and an update made
        // before that would be in neither the snapshot nor the stream. So: wait for a HUGZ, which the
        // engine sends at once for our subscription to HUGZ, the last one; drop whatever comes before
        // it (the snapshot covers it). The SUB alone is polled, a tenth of a second at a time.
        while (true)
        {
            if (updates.PollIn(deadline.Cap(Tenth)) && ReceiveMessage(updates) is [var first, ..] hugz && Is(first, Hugz))
            {
                FollowEngine(hugz); // which engine, and its sequence now: every update after it is higher
                break;
            }
            if (deadline.Expired)
                throw new Failure("timeout", $"no HUGZ from {args.Updates} within {args.Timeout} ms");
        }

        long heard = Stopwatch.GetTimestamp(); // when the engine was last heard from: silence means it is gone
        bool Silent() => Stopwatch.GetElapsedTime(heard) >= TimeSpan.FromMilliseconds(args.Silence);

        foreach (string tree in args.Subtrees) // all requests in flight at once on the one DEALER
            snapshot.SendMultipartBytes(Icanhaz, Bytes(tree));
        while (facade.Waiting.Count > 0) // the SUB stays unread meanwhile: its updates wait, in order
        {
            if (snapshot.PollIn(deadline.Cap(Tenth)) && ReceiveMessage(snapshot) is { } frames)
            {
                heard = Stopwatch.GetTimestamp();
                facade.OnSnapshot(frames);
            }
            else if (Silent())
                throw new Restarted("silence", seen);
            if (deadline.Expired)
                throw new Failure("timeout", $"subtrees [{string.Join(", ", facade.Waiting)}] never completed");
        }

        var items = Sockets.PollIn(sockets.All);
        bool collectorLive = false;
        while (!facade.Finished())
        {
            if (deadline.Expired)
                throw new Failure("timeout", $"applied {facade.Applied} updates, up to {facade.Last}, and was not done");
            // [poll] The three sockets at once, a tenth of a second at most (the silence timer), never
            // past the deadline; then receives that do not wait, one message per ready socket, in the
            // protocol's order: DEALER, SUB, XPUB.
            var ready = Sockets.Poll(items, deadline.Cap(Tenth));
            if (ready.Contains(snapshot) && ReceiveMessage(snapshot) is { } reply)
                Contract.Emit("error", new { code = "unexpected-snapshot", reason = $"{Quote(reply[0])} after every KTHXBAI" });
            if (ready.Contains(updates) && ReceiveMessage(updates) is { } update)
            {
                heard = Stopwatch.GetTimestamp();
                FollowEngine(update);
                facade.OnUpdate(update);
            }
            else if (Silent()) // not even a HUGZ, which the engine sends every --hugz ms
                throw new Restarted("silence", seen);
            if (collector is not null && ready.Contains(collector) && collector.ReceiveFrameIfReady() is [1]
                && !collectorLive) // the collector's subscription to everything
            {
                collectorLive = true;
                for (int n = 1; n <= facade.Writes.Count; n++)
                {
                    var (key, value) = facade.Writes[n - 1];
                    int ttl = n % 2 == 0 ? args.Ttl : 0;
                    collector.SendMultipartBytes(KvsetFrames(key, value, ttl));
                    Contract.Emit("wrote", new { key, value = Convert.ToHexStringLower(value), ttl });
                }
            }
            if (collectorLive && !facade.DeleteSent && facade.Echoed.Count == facade.Writes.Count)
            {
                string first = facade.Writes[0].Key;
                collector!.SendMultipartBytes(KvsetFrames(first, [], 0));
                facade.DeleteSent = true;
                Contract.Emit("wrote", new { key = first, value = "", ttl = 0 });
            }
        }
        return facade;
    }
}
