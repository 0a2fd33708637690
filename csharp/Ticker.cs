// ticker: data distribution over PUB/SUB with an XSUB/XPUB proxy (examples/ticker/PROTOCOL.md).
using System.Buffers.Binary;
using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Text;
using NetMQ;
using NetMQ.Sockets;

static class Ticker
{
    // ZMQ_MAXMSGSIZE (NetMQ Options.MaxMsgSize) on every socket: NetMQ itself drops a bigger frame, and
    // the sender's connection with it. The largest legal frames are a subscription (1, '@' and a
    // 32-byte name: 34 bytes) and a tick's frame 0 (9 bytes). It bounds subscriptions too: one of
    // 60 KB overflowed the stack in NetMQ's subscription trie.
    internal const long MaxMessage = 256;

    record PublisherArgs(
        string Ticks, List<string> Symbols, ulong Seed, int Subscribers, int Interval, int Timeout, bool Monitor);

    record ProxyArgs(string Upstream, string Downstream, int Timeout, bool Monitor);

    record SubscriberArgs(
        string Ticks, string Name, List<string> Symbols, int Count, ulong Seed,
        (string Old, string New)? Switch, int SwitchAfter, int Timeout, bool Monitor);

    record EncodeArgs(ulong Seed, string Symbol, ulong Sequence, long Timestamp);

    /// <summary>A tick that passed every check.</summary>
    internal readonly record struct Tick(string Symbol, ulong Sequence, long Timestamp, double Price);

    public static Command Command() => new("ticker", "data distribution over PUB/SUB with an XSUB/XPUB proxy")
    {
        PublisherCommand(), ProxyCommand(), SubscriberCommand(), EncodeCommand(),
    };

    static Command PublisherCommand()
    {
        Option<string> ticks = Flags.Endpoint("--ticks", "tcp://127.0.0.1:5557");
        Option<List<string>> symbols = Flags.Typed<List<string>>(
            "--symbols", SymbolsRule, TryParseSymbols, () => ["AAPL", "GOOG", "GOOGL", "MSFT", "IBM"]);
        Option<ulong> seed = Flags.UInt64("--seed", 1);
        Option<int> subscribers = Flags.AtLeast("--subscribers", 1, 1);
        Option<int> interval = Flags.AtLeast("--interval", 1, 2);
        Option<int> timeout = Flags.AtLeast("--timeout", 0, 0);
        Option<string> monitor = Flags.Monitor();
        Command publisher = new("publisher", "publish ticks once the subscribers are there")
        {
            ticks, symbols, seed, subscribers, interval, timeout, monitor,
        };
        publisher.SetAction(p => RunPublisher(new(
            p.GetValue(ticks)!, p.GetValue(symbols)!, p.GetValue(seed), p.GetValue(subscribers),
            p.GetValue(interval), p.GetValue(timeout), p.GetValue(monitor) == "on")));
        return publisher;
    }

    static Command ProxyCommand()
    {
        Option<string> upstream = Flags.Endpoint("--upstream", "tcp://127.0.0.1:5557");
        Option<string> downstream = Flags.Endpoint("--downstream", "tcp://127.0.0.1:5558");
        Option<int> timeout = Flags.AtLeast("--timeout", 0, 0);
        Option<string> monitor = Flags.Monitor();
        Command proxy = new("proxy", "forward ticks downstream and subscriptions upstream")
        {
            upstream, downstream, timeout, monitor,
        };
        proxy.SetAction(p => RunProxy(new(
            p.GetValue(upstream)!, p.GetValue(downstream)!, p.GetValue(timeout), p.GetValue(monitor) == "on")));
        return proxy;
    }

    static Command SubscriberCommand()
    {
        Option<string> ticks = Flags.Endpoint("--ticks", "tcp://127.0.0.1:5557");
        Option<string> name = Flags.Name("--name");
        Option<List<string>> symbols = Flags.Typed<List<string>>("--symbols", SymbolsRule, TryParseSymbols);
        Option<int> count = Flags.AtLeast("--count", 1, 20);
        Option<ulong> seed = Flags.UInt64("--seed", 1);
        Option<(string Old, string New)?> change = Flags.Typed<(string Old, string New)?>(
            "--switch", $"takes OLD:NEW, where {SymbolRule}", TryParseSwitch, () => null);
        Option<int> switchAfter = Flags.AtLeast("--switch-after", 1, 10);
        Option<int> timeout = Flags.AtLeast("--timeout", 0, 30000);
        Option<string> monitor = Flags.Monitor();
        Command subscriber = new("subscriber", "receive and check the ticks of some symbols")
        {
            ticks, name, symbols, count, seed, change, switchAfter, timeout, monitor,
        };
        subscriber.SetAction(p => RunSubscriber(new(
            p.GetValue(ticks)!, p.GetValue(name)!, p.GetValue(symbols)!, p.GetValue(count), p.GetValue(seed),
            p.GetValue(change), p.GetValue(switchAfter), p.GetValue(timeout), p.GetValue(monitor) == "on")));
        return subscriber;
    }

    static Command EncodeCommand()
    {
        Option<ulong> seed = Flags.UInt64("--seed");
        Option<string> symbol = Flags.Typed<string>("--symbol", SymbolRule, TryParseSymbol);
        Option<ulong> sequence = Flags.UInt64("--sequence");
        Option<long> timestamp = Flags.Typed<long>("--timestamp", "takes a signed 64-bit integer", TryParseInt64);
        Command encode = new("encode", "print the frames of one tick (the test vectors)") { seed, symbol, sequence, timestamp };
        encode.SetAction(p => RunEncode(new(
            p.GetValue(seed), p.GetValue(symbol)!, p.GetValue(sequence), p.GetValue(timestamp))));
        return encode;
    }

    // --- flag types ------------------------------------------------------------------------------

    public const string SymbolRule = "a symbol is 1 to 8 letters A-Z";
    public const int MaxSymbols = 32;
    public const string SymbolsRule = "takes 1 to 32 symbols, none twice, separated by ','; " + SymbolRule;

    internal static bool IsSymbol(string text) => text.Length is >= 1 and <= 8 && text.All(char.IsAsciiLetterUpper);

    public static bool TryParseSymbol(string text, out string symbol)
    {
        symbol = text;
        return IsSymbol(text);
    }

    /// <summary>A comma-separated list of 1 to <see cref="MaxSymbols"/> symbols, none twice: every flag
    /// that takes symbols parses it here.</summary>
    public static bool TryParseSymbols(string text, out List<string> symbols)
    {
        symbols = [.. text.Split(',')];
        return symbols.Count <= MaxSymbols && symbols.Distinct().Count() == symbols.Count && symbols.All(IsSymbol);
    }

    static bool TryParseInt64(string text, out long number) =>
        long.TryParse(text, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out number);

    static bool TryParseSwitch(string text, out (string Old, string New)? change)
    {
        string[] parts = text.Split(':', 2);
        change = parts.Length == 2 ? (parts[0], parts[1]) : null;
        return change is var (old, @new) && IsSymbol(old) && IsSymbol(@new);
    }

    // --- the tick: prices anyone can recompute ---------------------------------------------------

    static ulong Fnv1a64(ReadOnlySpan<byte> data)
    {
        ulong h = 0xCBF29CE484222325UL;
        foreach (byte b in data)
            h = (h ^ b) * 0x100000001B3UL;
        return h;
    }

    static ulong Cents(ulong seed, string symbol, ulong sequence) =>
        1000 + Prng.SplitMix64(seed ^ Fnv1a64(Encoding.ASCII.GetBytes(symbol)) ^ (sequence * Prng.Golden)) % 99001;

    /// <summary>Frame 0: the symbol and a NUL, so that subscribing to GOOG does not also match GOOGL.</summary>
    public static byte[] Topic(string symbol) => Encoding.ASCII.GetBytes(symbol + "\0");

    /// <summary>Whether these bytes are a <see cref="Topic"/>: 1 to 8 letters A-Z, then a NUL.</summary>
    public static bool IsTopic(ReadOnlySpan<byte> bytes) =>
        bytes.Length is >= 2 and <= 9 && bytes[^1] == 0 && !bytes[..^1].ContainsAnyExceptInRange((byte)'A', (byte)'Z');

    static byte[][] TickFrames(ulong seed, string symbol, ulong sequence, long timestamp)
    {
        // One IEEE division of an integer that converts exactly (it is below 2^53).
        double price = Cents(seed, symbol, sequence) / 100.0;
        byte[][] frames = [Topic(symbol), new byte[8], new byte[8], new byte[8]];
        // Big-endian (network order), whatever the machine's own byte order.
        BinaryPrimitives.WriteUInt64BigEndian(frames[1], sequence);
        BinaryPrimitives.WriteInt64BigEndian(frames[2], timestamp);
        BinaryPrimitives.WriteDoubleBigEndian(frames[3], price);
        return frames;
    }

    static void RunEncode(EncodeArgs args)
    {
        byte[][] frames = TickFrames(args.Seed, args.Symbol, args.Sequence, args.Timestamp);
        Events.Emit("encoded", new
        {
            frames = frames.Select(Convert.ToHexStringLower).ToArray(),
            cents = Cents(args.Seed, args.Symbol, args.Sequence),
        });
        Events.Emit("done");
    }

    /// <summary>The first bytes of a frame in hex, for error reasons.</summary>
    static string Show(byte[] frame, int most = 40) => Convert.ToHexStringLower(frame, 0, Math.Min(most, frame.Length));

    // --- publisher -------------------------------------------------------------------------------

    static void RunPublisher(PublisherArgs args)
    {
        using var stop = new StopSignal();
        var deadline = new Deadline(args.Timeout);
        // XPUB is a PUB that also hands us the subscriptions coming from downstream.
        using var ticks = new XPublisherSocket();
        ticks.Options.Linger = TimeSpan.Zero; // ticks are a stream: none is owed to anyone once we stop
        ticks.Options.MaxMsgSize = MaxMessage;
        using var ticksMonitor = SocketMonitor.Attach(ticks, "ticks", args.Monitor);
        Sockets.Bind(ticks, args.Ticks);
        Events.Emit("ready", new { ticks = ticks.Options.LastEndpoint });

        var topics = new HashSet<string>(); // the topics we reported as subscribed, and not since unsubscribed
        var subscribers = new HashSet<string>(); // every @name ever joined
        ulong sequence = 0; // every symbol gets one tick per round, so they share the round number
        var clock = Stopwatch.StartNew(); // rounds are paced to the millisecond: a fine-grained clock
        TimeSpan? nextRound = null; // publishing starts once every subscriber is there
        while (!stop.Raised)
        {
            if (deadline.Expired)
                throw new Failure("timeout", $"still publishing after {args.Timeout} ms");
            TimeSpan wait = nextRound is TimeSpan due
                ? TimeSpan.FromMilliseconds(Math.Max(0, Math.Ceiling((due - clock.Elapsed).TotalMilliseconds)))
                : TimeSpan.FromMilliseconds(100);
            // Waiting for a subscription is also the wait between rounds: a poll, never a sleep.
            // One frame at a time, whatever its "more" flag: NetMQ's XPUB applies only the first frame
            // of a peer's multipart message to its filter and passes the others on unfiltered, so each
            // frame is judged on its own.
            if (ticks.TryReceiveFrameBytes(deadline.Cap(wait), out byte[]? frame))
            {
                OnSubscription(frame, topics, subscribers);
                // Slow joiner: a tick sent before a subscription arrives is dropped for that subscriber.
                // Each one subscribes to its symbols before its @name, so once every @name is here,
                // every symbol subscription is too.
                if (nextRound is null && subscribers.Count >= args.Subscribers)
                {
                    Events.Emit("started", new { subscribers = subscribers.Count });
                    nextRound = clock.Elapsed;
                }
            }
            if (nextRound is TimeSpan next && clock.Elapsed >= next)
            {
                sequence++;
                long nowMs = DateTimeOffset.UtcNow.ToUnixTimeMilliseconds();
                // XPUB, like PUB, sends each tick only to the subscribers whose prefix matches frame 0,
                // and drops it for one whose queue is full (the high-water mark) instead of blocking.
                foreach (string symbol in args.Symbols)
                    ticks.SendMultipartBytes(TickFrames(args.Seed, symbol, sequence, nowMs));
                nextRound = next + TimeSpan.FromMilliseconds(args.Interval);
            }
        }
        Events.Emit("done", new { rounds = sequence, ticks = sequence * (ulong)args.Symbols.Count });
    }

    /// <summary>A subscription message: 1 (subscribe) or 0 (unsubscribe), then the topic. XPUB passes on
    /// the first subscribe to a topic and the unsubscribe of its last subscriber, but not for frames it
    /// let through unfiltered: our own set of <paramref name="topics"/> reports each change once.</summary>
    static void OnSubscription(byte[] message, HashSet<string> topics, HashSet<string> subscribers)
    {
        if (message.Length < 2 || message[0] is not (0 or 1))
        {
            Events.Emit("error", new { code = "malformed-subscription", reason = $"not a subscription: {Show(message)}" });
            return;
        }
        bool on = message[0] == 1;
        ReadOnlySpan<byte> topic = message.AsSpan(1);
        if (topic[0] == (byte)'@' && Flags.IsName(topic[1..]))
        {
            string name = Events.Strict.GetString(topic[1..]);
            if (!on)
            {
                topics.Remove("@" + name); // silently; the name still counts among the subscribers
            }
            else if (topics.Add("@" + name))
            {
                subscribers.Add(name);
                Events.Emit("joined", new { subscriber = name });
            }
        }
        else if (IsTopic(topic))
        {
            string symbol = Encoding.ASCII.GetString(topic[..^1]); // A-Z: never mistaken for an @name
            if (on ? topics.Add(symbol) : topics.Remove(symbol))
                Events.Emit(on ? "subscribed" : "unsubscribed", new { symbol });
        }
        else
        {
            Events.Emit("error", new { code = "malformed-subscription", reason = $"unknown topic {Show(message[1..])}" });
        }
    }

    // --- proxy -----------------------------------------------------------------------------------

    static void RunProxy(ProxyArgs args)
    {
        using var stop = new StopSignal();
        var deadline = new Deadline(args.Timeout);
        using var upstream = new XSubscriberSocket(); // faces the publisher: receives ticks, sends subscriptions
        using var downstream = new XPublisherSocket(); // faces subscribers: sends ticks, receives subscriptions
        upstream.Options.Linger = TimeSpan.Zero;
        downstream.Options.Linger = TimeSpan.Zero;
        upstream.Options.MaxMsgSize = MaxMessage;
        downstream.Options.MaxMsgSize = MaxMessage;
        // Subscriptions go upstream once per topic (XPUB passes on only the first): one dropped at the
        // send high-water mark during a flood would be lost for good. No limit on XSUB's sends.
        upstream.Options.SendHighWatermark = 0;
        using var upstreamMonitor = SocketMonitor.Attach(upstream, "upstream", args.Monitor);
        using var downstreamMonitor = SocketMonitor.Attach(downstream, "downstream", args.Monitor);
        Sockets.Bind(downstream, args.Downstream);
        Sockets.Connect(upstream, args.Upstream);
        Events.Emit("ready", new { downstream = downstream.Options.LastEndpoint });

        // The library's proxy moves every message both ways: ticks down, subscriptions up. It runs on
        // a poller of ours (Start only hooks the two sockets to it), so that a timer of the same loop
        // can look at the stop flag and the deadline: everything happens on this one thread.
        using var poller = new NetMQPoller { upstream, downstream };
        new Proxy(upstream, downstream, poller: poller).Start();
        var check = new NetMQTimer(TimeSpan.FromMilliseconds(100));
        check.Elapsed += (_, _) =>
        {
            if (stop.Raised || deadline.Expired)
                poller.Stop(); // from the poller's own thread: it stops once this round is over
        };
        poller.Add(check);
        poller.Run(); // until stopped
        if (!stop.Raised)
            throw new Failure("timeout", $"still proxying after {args.Timeout} ms");
        Events.Emit("done");
    }

    // --- subscriber ------------------------------------------------------------------------------

    /// <summary>The first broken rule of a tick, as (code, reason), or null and the tick when it is good.</summary>
    internal static (string Code, string Reason)? CheckTick(List<byte[]> frames, List<string> subscribed, ulong seed, out Tick tick)
    {
        tick = default;
        if (frames.Count != 4)
            return ("malformed-tick", $"expected 4 frames, got {frames.Count}");
        byte[] symbolBytes = frames[0];
        if (!IsTopic(symbolBytes))
            return ("malformed-tick", $"frame 0 is not a symbol and a NUL: {Show(symbolBytes, 12)}");
        if (frames.Skip(1).Any(frame => frame.Length != 8))
        {
            string sizes = string.Join(", ", frames.Skip(1).Select(frame => frame.Length));
            return ("malformed-tick", $"frames 1-3 have [{sizes}] bytes, not 8 each");
        }
        ulong sequence = BinaryPrimitives.ReadUInt64BigEndian(frames[1]);
        // 2^63 or more: past what every language's JSON numbers carry alike, and no publisher gets there.
        if (sequence > long.MaxValue)
            return ("malformed-tick", $"sequence {sequence} is 2^63 or more");
        string symbol = Encoding.ASCII.GetString(symbolBytes, 0, symbolBytes.Length - 1);
        if (!subscribed.Contains(symbol))
            return ("unexpected-symbol", $"{symbol} is not subscribed");
        long timestamp = BinaryPrimitives.ReadInt64BigEndian(frames[2]);
        byte[] expected = TickFrames(seed, symbol, sequence, timestamp)[3];
        if (!frames[3].AsSpan().SequenceEqual(expected))
            return ("wrong-price", $"{symbol} #{sequence}: price bytes {Show(frames[3])}, expected {Show(expected)}");
        tick = new(symbol, sequence, timestamp, BinaryPrimitives.ReadDoubleBigEndian(frames[3]));
        return null;
    }

    static void RunSubscriber(SubscriberArgs args)
    {
        string? old = args.Switch?.Old, @new = args.Switch?.New;
        if (old is not null && (!args.Symbols.Contains(old) || args.Symbols.Contains(@new!)))
            throw new Usage("--switch OLD:NEW needs OLD among --symbols and NEW not");
        var deadline = new Deadline(args.Timeout);
        using var sub = new SubscriberSocket();
        sub.Options.Linger = TimeSpan.Zero;
        sub.Options.MaxMsgSize = MaxMessage;
        using var ticksMonitor = SocketMonitor.Attach(sub, "ticks", args.Monitor);
        Sockets.Connect(sub, args.Ticks);
        var subscribed = new List<string>(args.Symbols);
        foreach (string symbol in subscribed)
            sub.Subscribe(Topic(symbol)); // a prefix match on frame 0: the NUL keeps GOOGL out of GOOG
        // Last, our own topic: the publisher waits for it, and by then our symbols are in place.
        sub.Subscribe(Encoding.UTF8.GetBytes("@" + args.Name));
        Events.Emit("ready", new { name = args.Name, symbols = subscribed });

        var received = new Dictionary<string, int>();
        foreach (string symbol in subscribed)
            received[symbol] = 0;
        var last = new Dictionary<string, ulong>(); // each symbol's last sequence: a jump is a gap, reported as such
        bool switched = old is null;
        int total = 0, malformed = 0;
        var frames = new List<byte[]>();
        while (!(switched && subscribed.All(symbol => received[symbol] >= args.Count)))
        {
            // Checked on every turn, not only when the receive times out: a stream of ticks that count
            // for nothing (bad ones, or more of a symbol already done) must not keep us past it.
            if (deadline.Expired)
            {
                var missing = received.Where(entry => entry.Value < args.Count).Select(entry => $"{entry.Key}: {entry.Value}");
                throw new Failure("timeout", $"not done after {args.Timeout} ms; ticks so far: {string.Join(", ", missing)}");
            }
            if (!sub.TryReceiveMultipartBytes(deadline.Cap(TimeSpan.FromSeconds(1)), ref frames))
                continue;
            if (CheckTick(frames, subscribed, args.Seed, out Tick tick) is (string code, string reason))
            {
                malformed++;
                Events.Emit("error", new { code, reason });
                continue;
            }
            total++;
            received[tick.Symbol]++;
            // PUB/SUB drops silently: ticks published while the path to us was down (a proxy that
            // restarted) or while a queue was full (the HWM) are gone. Say so, never hide it. Below
            // 2^63 (CheckTick), so last + 1 cannot wrap.
            if (last.TryGetValue(tick.Symbol, out ulong previous) && tick.Sequence > previous + 1)
                Events.Emit("gap", new { symbol = tick.Symbol, after = previous, next = tick.Sequence });
            last[tick.Symbol] = tick.Sequence;
            Events.Emit("tick", new
            {
                symbol = tick.Symbol, sequence = tick.Sequence, timestamp = tick.Timestamp, price = tick.Price,
            });
            if (tick.Symbol == old && received[old] == args.SwitchAfter)
            {
                // The SUB socket filters by its current subscriptions as it delivers: no tick of OLD
                // comes after this, even one already queued. NEW's first ticks may be missed while the
                // subscription travels upstream.
                sub.Unsubscribe(Topic(old));
                subscribed.Remove(old);
                Events.Emit("unsubscribed", new { symbol = old });
                sub.Subscribe(Topic(@new!));
                subscribed.Add(@new!);
                received.TryAdd(@new!, 0);
                Events.Emit("subscribed", new { symbol = @new });
                switched = true;
            }
        }
        Events.Emit("done", new { ticks = total, malformed });
    }
}
