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
    // [max size] 256 bytes per frame (NetMQ Options.MaxMsgSize) on every socket, set before bind or
    // connect: NetMQ drops a bigger frame together with the connection that sent it. The largest legal
    // frames are a subscription (1, '@' and a 32-byte name: 34 bytes) and a tick's frame 0 (9 bytes).
    // It matters most where subscriptions arrive (XPUB): one of 60 KB overflowed the stack in NetMQ's
    // subscription trie.
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
        Contract.Emit("encoded", new
        {
            frames = frames.Select(Convert.ToHexStringLower).ToArray(),
            cents = Cents(args.Seed, args.Symbol, args.Sequence),
        });
        Contract.Emit("done");
    }

    /// <summary>The first bytes of a frame in hex, for error reasons.</summary>
    static string Show(byte[] frame, int most = 40) => Convert.ToHexStringLower(frame, 0, Math.Min(most, frame.Length));

    // --- publisher -------------------------------------------------------------------------------

    static void RunPublisher(PublisherArgs args)
    {
        using var stop = new StopSignal();
        var deadline = new Deadline(args.Timeout);
        // [XPUB] A PUB that also hands the application each subscription from downstream, as a
        // message: a first byte 1 (subscribe) or 0 (unsubscribe), then the topic.
        using var ticks = new XPublisherSocket();
        // [linger] 0: ticks are a stream, and none still queued is owed to anyone once we stop:
        // closing drops them.
        ticks.Options.Linger = TimeSpan.Zero;
        ticks.Options.MaxMsgSize = MaxMessage;
        using var ticksMonitor = SocketMonitor.Attach(ticks, "ticks", args.Monitor);
        Sockets.Bind(ticks, args.Ticks);
        Contract.Emit("ready", new { ticks = ticks.Options.LastEndpoint });

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
            // [poll] XPUB, the one socket, with a timeout up to the next round (or 100 ms before the first,
            // to see the stop flag), never past the deadline: waiting for a subscription is also the
            // wait between rounds, never a sleep. Then a receive that does not wait (POLLIN is a hint);
            // no EINTR reaches a .NET poll (StopSignal).
            // One frame at a time, whatever its "more" flag: NetMQ's XPUB applies
            // only the first frame of a peer's multipart message to its filter and passes the others
            // on unfiltered, so each frame is judged on its own instead of trusting the message.
            if (ticks.PollIn(deadline.Cap(wait)) && ticks.ReceiveFrameIfReady() is { } frame)
            {
                OnSubscription(frame, topics, subscribers);
                // [slow joiner] A tick published before a subscription reaches the publisher is
                // dropped for that subscriber. Each one subscribes to its symbols before its @name, so
                // once every @name is here, every symbol subscription is too: then publishing starts.
                if (nextRound is null && subscribers.Count >= args.Subscribers)
                {
                    Contract.Emit("started", new { subscribers = subscribers.Count });
                    nextRound = clock.Elapsed;
                }
            }
            if (nextRound is TimeSpan next && clock.Elapsed >= next)
            {
                sequence++;
                long nowMs = DateTimeOffset.UtcNow.ToUnixTimeMilliseconds();
                // [HWM] XPUB, like PUB, sends each tick only to the subscribers whose prefix matches
                // frame 0, and drops it for one whose queue is at the high-water mark (1000 messages, the
                // default) instead of blocking: --interval paces the rounds far below it.
                foreach (string symbol in args.Symbols)
                    ticks.SendMultipartBytes(TickFrames(args.Seed, symbol, sequence, nowMs));
                nextRound = next + TimeSpan.FromMilliseconds(args.Interval);
            }
        }
        Contract.Emit("done", new { rounds = sequence, ticks = sequence * (ulong)args.Symbols.Count });
    }

    /// <summary>A subscription message: 1 (subscribe) or 0 (unsubscribe), then the topic. XPUB passes on
    /// the first subscribe to a topic and the unsubscribe of its last subscriber, but not for frames it
    /// let through unfiltered: our own set of <paramref name="topics"/> reports each change once.</summary>
    static void OnSubscription(byte[] message, HashSet<string> topics, HashSet<string> subscribers)
    {
        if (message.Length < 2 || message[0] is not (0 or 1))
        {
            Contract.Emit("error", new { code = "malformed-subscription", reason = $"not a subscription: {Show(message)}" });
            return;
        }
        bool on = message[0] == 1;
        ReadOnlySpan<byte> topic = message.AsSpan(1);
        if (topic[0] == (byte)'@' && Flags.IsName(topic[1..]))
        {
            string name = Contract.Strict.GetString(topic[1..]);
            if (!on)
            {
                topics.Remove("@" + name); // silently; the name still counts among the subscribers
            }
            else if (topics.Add("@" + name))
            {
                subscribers.Add(name);
                Contract.Emit("joined", new { subscriber = name });
            }
        }
        else if (IsTopic(topic))
        {
            string symbol = Encoding.ASCII.GetString(topic[..^1]); // A-Z: never mistaken for an @name
            if (on ? topics.Add(symbol) : topics.Remove(symbol))
                Contract.Emit(on ? "subscribed" : "unsubscribed", new { symbol });
        }
        else
        {
            Contract.Emit("error", new { code = "malformed-subscription", reason = $"unknown topic {Show(message[1..])}" });
        }
    }

    // --- proxy -----------------------------------------------------------------------------------

    static void RunProxy(ProxyArgs args)
    {
        using var stop = new StopSignal();
        var deadline = new Deadline(args.Timeout);
        // [XSUB] A SUB whose subscriptions are messages the application sends: here the proxy
        // forwards the ones its XPUB hands up. It faces the publisher: receives ticks, sends subscriptions.
        using var upstream = new XSubscriberSocket();
        using var downstream = new XPublisherSocket(); // faces subscribers: sends ticks, receives subscriptions
        // [linger] 0 on both: ticks are a stream, and at the stop nothing still queued is owed to anyone.
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
        Contract.Emit("ready", new { downstream = downstream.Options.LastEndpoint });

        // [proxy] The library's own proxy moves ticks from XSUB to XPUB and subscriptions from XPUB to
        // XSUB, and adds nothing. It is a loop of its own, which never returns by itself: NetMQ has no
        // steerable proxy (no control PAIR to send TERMINATE on), so it runs on a NetMQPoller's thread
        // (Start, given a poller, only hands it the sockets) and this thread stops that poller, once
        // SIGTERM/SIGINT comes or the deadline passes. The role itself has no socket to poll.
        using var poller = new NetMQPoller { upstream, downstream };
        var proxy = new Proxy(upstream, downstream, poller: poller);
        proxy.Start();
        poller.RunAsync("proxy");
        bool signalled = stop.Wait(deadline.Remaining);
        poller.Stop(); // waits for the poller's thread: from here on, this thread alone uses the sockets
        proxy.Stop();
        if (!signalled)
            throw new Failure("timeout", $"still proxying after {args.Timeout} ms");
        Contract.Emit("done");
    }

    // --- subscriber ------------------------------------------------------------------------------

    /// <summary>The first broken rule of a tick, as (code, reason), or null and the tick when it is good.</summary>
    internal static (string Code, string Reason)? CheckTick(List<byte[]> frames, List<string> subscribed, ulong seed, out Tick tick)
    {
        tick = default;
        // [multipart] A tick arrives whole or not at all: the receive returns its 4 frames together.
        // How many came is the peer's choice all the same: checked first, never assumed.
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
        sub.Options.Linger = TimeSpan.Zero; // a SUB sends nothing but its subscriptions: none is owed at exit
        sub.Options.MaxMsgSize = MaxMessage;
        using var ticksMonitor = SocketMonitor.Attach(sub, "ticks", args.Monitor);
        Sockets.Connect(sub, args.Ticks);
        // [SUB] It delivers only the ticks whose frame 0 starts with one of its subscriptions, a prefix
        // match: the NUL after each symbol keeps GOOGL out of GOOG; it receives nothing it did not
        // subscribe to. It subscribes once connected, so the subscriptions go out in the order made
        // (made before a connect, they would go out sorted by bytes, "@" before every symbol).
        var subscribed = new List<string>(args.Symbols);
        foreach (string symbol in subscribed)
            sub.Subscribe(Topic(symbol));
        // Last, our own topic: the publisher waits for it, and by then our symbols are in place.
        sub.Subscribe(Encoding.UTF8.GetBytes("@" + args.Name));
        Contract.Emit("ready", new { name = args.Name, symbols = subscribed });

        var received = new Dictionary<string, int>();
        foreach (string symbol in subscribed)
            received[symbol] = 0;
        var last = new Dictionary<string, ulong>(); // each symbol's last sequence: a jump is a gap, reported as such
        bool switched = old is null;
        int total = 0, malformed = 0;
        while (!(switched && subscribed.All(symbol => received[symbol] >= args.Count)))
        {
            // Checked on every turn, not only when the receive times out: a stream of ticks that count
            // for nothing (bad ones, or more of a symbol already done) must not keep us past it.
            if (deadline.Expired)
            {
                var missing = received.Where(entry => entry.Value < args.Count).Select(entry => $"{entry.Key}: {entry.Value}");
                throw new Failure("timeout", $"not done after {args.Timeout} ms; ticks so far: {string.Join(", ", missing)}");
            }
            // [poll] The SUB, a second at most (it has no timer), never past the deadline; then a receive
            // that does not wait.
            if (!sub.PollIn(deadline.Cap(TimeSpan.FromSeconds(1))) || sub.ReceiveIfReady() is not { } frames)
                continue;
            if (CheckTick(frames, subscribed, args.Seed, out Tick tick) is (string code, string reason))
            {
                malformed++;
                Contract.Emit("error", new { code, reason });
                continue;
            }
            total++;
            received[tick.Symbol]++;
            // PUB/SUB drops silently: ticks published while the path to us was down (a proxy that
            // restarted) or while a queue was full (the HWM) are gone. Say so, never hide it. Below
            // 2^63 (CheckTick), so last + 1 cannot wrap.
            if (last.TryGetValue(tick.Symbol, out ulong previous) && tick.Sequence > previous + 1)
                Contract.Emit("gap", new { symbol = tick.Symbol, after = previous, next = tick.Sequence });
            last[tick.Symbol] = tick.Sequence;
            Contract.Emit("tick", new
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
                Contract.Emit("unsubscribed", new { symbol = old });
                sub.Subscribe(Topic(@new!));
                subscribed.Add(@new!);
                received.TryAdd(@new!, 0);
                Contract.Emit("subscribed", new { symbol = @new });
                switched = true;
            }
        }
        Contract.Emit("done", new { ticks = total, malformed });
    }
}
