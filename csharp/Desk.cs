// desk: a trading desk, one process whose threads talk over inproc pipes (examples/desk/PROTOCOL.md).
//
// One thread per service: four agents, each the client role of examples 1-4 turned into a loop that
// polls its sockets and its pipe, and the main thread, which runs the scenario and alone writes the
// agents' events to stdout (with --monitor on, the socket monitors' threads write their own lines,
// whole: SocketMonitor.cs). The threads share no state, only messages: "don't share state, share messages".
using System.Buffers.Binary;
using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Text;
using NetMQ;
using NetMQ.Sockets;

static class Desk
{
    // Each agent gets its own configuration, copied, when its thread starts; everything after that
    // comes as pipe messages. Records of strings and numbers: nothing in them can be shared by mistake.
    // Monitor: --monitor, for the agent's own sockets.
    record ChatConfig(string Name, string Requests, string Broadcasts, int Clients, bool Monitor);

    record TickerConfig(string Name, string Ticks, ulong Seed, bool Monitor);

    record ValuationConfig(
        string Orders, string Results, string Control, int Workers, ulong Seed, int Quiet, int Heartbeat, bool Monitor);

    record QueryConfig(string Name, string Snapshot, string Updates, string Collector, List<string> Subtrees, bool Monitor);

    record TraderArgs(
        string Name, ChatConfig Chat, int Posts, TickerConfig Ticker, List<string> Follow, string Forget, int ForgetAfter,
        int TickCount, ValuationConfig Valuation, int Trade, QueryConfig Query, string Http, int Timeout, bool Monitor);

    // --- flags -----------------------------------------------------------------------------------

    public static Command Command() => new("desk", "a trading desk: agent threads over inproc PAIR pipes") { TraderCommand() };

    static Command TraderCommand()
    {
        Option<string> name = Flags.Typed<string>("--name", "a desk name is 1 to 32 of A-Z a-z 0-9 _ -", Query.TryParseSegment);
        Option<string> chatRequests = Flags.Endpoint("--chat-requests", "tcp://127.0.0.1:5555");
        Option<string> chatBroadcasts = Flags.Endpoint("--chat-broadcasts", "tcp://127.0.0.1:5556");
        Option<int> chatClients = Flags.AtLeast("--chat-clients", 1, 1);
        Option<int> posts = Flags.AtLeast("--posts", 0, 5);
        Option<string> ticks = Flags.Endpoint("--ticks", "tcp://127.0.0.1:5557");
        Option<List<string>> follow = Flags.Typed<List<string>>(
            "--follow", Ticker.SymbolsRule, Ticker.TryParseSymbols, () => ["AAPL", "GOOG", "MSFT"]);
        Option<string> forget = Flags.Typed<string>("--forget", $"{Ticker.SymbolRule}, or nothing", TryParseForget, () => "");
        Option<int> forgetAfter = Flags.AtLeast("--forget-after", 1, 10);
        Option<int> tickCount = Flags.AtLeast("--tick-count", 1, 20);
        Option<ulong> seed = Flags.UInt64("--seed", 1);
        Option<string> orders = Flags.Endpoint("--orders", "tcp://127.0.0.1:5562");
        Option<string> results = Flags.Endpoint("--results", "tcp://127.0.0.1:5560");
        Option<string> control = Flags.Endpoint("--control", "tcp://127.0.0.1:5561");
        Option<int> trade = Flags.Typed<int>("--trade", $"takes 0 to {MaxTrade} orders", TryParseTrade, () => 100);
        Option<int> workers = Flags.AtLeast("--workers", 1, 1);
        Option<int> quiet = Flags.AtLeast("--quiet", 1, 1000);
        Option<int> heartbeat = Flags.AtLeast("--heartbeat", 1, 100);
        Option<string> snapshot = Flags.Endpoint("--snapshot", "tcp://127.0.0.1:5566");
        Option<string> updates = Flags.Endpoint("--updates", "tcp://127.0.0.1:5567");
        Option<string> collector = Flags.Endpoint("--collector", "tcp://127.0.0.1:5568");
        Option<List<string>> subtrees = Flags.Typed<List<string>>(
            "--subtrees", "takes distinct subtrees like /prices/ (or all), separated by ','", Query.TryParseSubtrees,
            () => ["/prices/", "/desks/"]);
        Option<string> http = Flags.Typed<string>(
            "--http", "takes a tcp:// endpoint (the port a number or *), or nothing", Web.TryParseEndpoint, () => "");
        Option<int> timeout = Flags.AtLeast("--timeout", 0, 60000);
        Option<string> monitor = Flags.Monitor();
        Command trader = new("trader", "run the desk's scenario with four agent threads")
        {
            name, chatRequests, chatBroadcasts, chatClients, posts, ticks, follow, forget, forgetAfter, tickCount, seed,
            orders, results, control, trade, workers, quiet, heartbeat, snapshot, updates, collector, subtrees, http, timeout,
            monitor,
        };
        trader.SetAction(p =>
        {
            string desk = p.GetValue(name)!;
            ulong s = p.GetValue(seed);
            bool watch = p.GetValue(monitor) == "on";
            return RunTrader(new(
                desk, new(desk, p.GetValue(chatRequests)!, p.GetValue(chatBroadcasts)!, p.GetValue(chatClients), watch),
                p.GetValue(posts), new(desk, p.GetValue(ticks)!, s, watch), p.GetValue(follow)!, p.GetValue(forget)!,
                p.GetValue(forgetAfter), p.GetValue(tickCount),
                new(p.GetValue(orders)!, p.GetValue(results)!, p.GetValue(control)!, p.GetValue(workers), s,
                    p.GetValue(quiet), p.GetValue(heartbeat), watch),
                p.GetValue(trade),
                new(desk, p.GetValue(snapshot)!, p.GetValue(updates)!, p.GetValue(collector)!, p.GetValue(subtrees)!, watch),
                p.GetValue(http)!, p.GetValue(timeout), watch));
        });
        return trader;
    }

    const int MaxTrade = 1000000; // orders in a trade
    const int MaxQueued = 100; // commands an agent keeps waiting (posts, writes); more is "busy"

    static bool TryParseForget(string text, out string symbol)
    {
        symbol = text;
        return text == "" || Ticker.IsSymbol(text);
    }

    static bool TryParseTrade(string text, out int orders) =>
        int.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out orders) && orders <= MaxTrade;

    /// <summary>What the parser alone cannot check: exit 2 as well, before any thread starts.</summary>
    static void CheckFlags(TraderArgs args)
    {
        if (args.Forget != "" && !args.Follow.Contains(args.Forget))
            throw new Usage($"--forget {args.Forget} is not among --follow");
        // The valuation's total is written to /desks/NAME/valuation: the agent could never read it back
        // unless one of its subtrees holds it.
        string own = $"/desks/{args.Name}/";
        if (!args.Query.Subtrees.Any(tree => own.StartsWith(tree, StringComparison.Ordinal)))
            throw new Usage($"--subtrees must hold {own}");
    }

    // --- pipes -----------------------------------------------------------------------------------

    static readonly string[] AgentNames = ["chat", "ticker", "valuation", "query"];

    // [inproc] The pipes join threads of this one process through its one context (NetMQ's implicit
    // one): messages pass between the threads' queues, never through the network. The main thread binds
    // each endpoint before it starts the agent that connects to it: bind before connect always works.
    static string PipeEndpoint(string agent) => $"inproc://desk-{agent}";

    /// <summary>One end of a pipe.</summary>
    static PairSocket NewPipe()
    {
        // [PAIR] Exactly one peer, known in advance (a second connection is refused): it joins the main
        // thread and one agent, never routes and never drops.
        var pipe = new PairSocket();
        // [linger] 0: inproc hands each message to the peer's queue in the send itself, so nothing is
        // left to flush when a pipe closes.
        pipe.Options.Linger = TimeSpan.Zero;
        // [HWM] The high-water mark stays at 1000 messages: at it, PAIR blocks a send (the mute state)
        // instead of dropping. The main thread reads its pipes whenever they are readable, so none fills.
        // [max size] None on a pipe: inproc has no bytes to decode, only whole messages between threads
        // of one program that trust each other. The agents' own sockets keep their example's limit.
        return pipe;
    }

    static byte[] Ascii(string text) => Encoding.ASCII.GetBytes(text);

    // [multipart] A pipe message arrives whole or not at all, as any ZeroMQ message: frame 0 its name,
    // then its arguments. Its frame count is checked with its name, never assumed.
    /// <summary>Whether a pipe message is <paramref name="name"/> with <paramref name="frames"/> frames in all.</summary>
    static bool Is(List<byte[]> message, string name, int frames) =>
        message.Count == frames && message[0].AsSpan().SequenceEqual(Ascii(name));

    /// <summary>An agent's end of its pipe.</summary>
    sealed class Pipe : IDisposable
    {
        readonly string agent;

        /// <summary>Connect to the main thread's end, which it bound before it started this thread.</summary>
        public Pipe(string agent)
        {
            this.agent = agent;
            Socket.Connect(PipeEndpoint(agent));
        }

        public PairSocket Socket { get; } = NewPipe();

        /// <summary>Send an event up: frame 0 its name, frame 1 the JSON line the main thread writes as it
        /// is (with our "agent"), then the frames the main thread acts on. A PAIR send that finds the
        /// pipe full waits: an event is never dropped.</summary>
        public void Report(string name, object? fields, params byte[][] extras) =>
            Socket.SendMultipartBytes([Ascii(name), Contract.Line(name, fields, agent), .. extras]);

        /// <summary>The same, for the events with no extra frame; also what shared code reports through
        /// (a <see cref="global::Report"/>).</summary>
        public void Report(string name, object? fields = null) => Report(name, fields, []);

        /// <summary>The command waiting on the pipe, or null: read without waiting, after a poll.</summary>
        public List<byte[]>? Command() => Socket.ReceiveIfReady();

        /// <summary>A command of another shape: reported, and ignored.</summary>
        public void BadCommand(List<byte[]> command, string why) => Report("error", new
        {
            code = "bad-command",
            reason = $"{why}: [{string.Join(", ", command.Take(8).Select(frame => frame.Length))}] bytes, beginning {Query.Quote(command[0])}",
        });

        public void Dispose() => Socket.Dispose();
    }

    /// <summary>A chat post's text, from the scenario or the page: 1 to 4096 bytes of UTF-8.</summary>
    static bool IsPostText(byte[] text) => text.Length is >= 1 and <= Chat.MaxText && IsUtf8(text);

    static bool IsUtf8(byte[] data)
    {
        try
        {
            Contract.Strict.GetString(data);
            return true;
        }
        catch (DecoderFallbackException)
        {
            return false;
        }
    }

    // --- chat agent: a chat client ---------------------------------------------------------------

    const int Keepalive = 1000; // ms without a request before a keep-alive, as the chat client's default

    static void ChatAgent(ChatConfig config)
    {
        using var pipe = new Pipe("chat");
        int sent = 0, received = 0;
        try
        {
            // The chat client's sockets, options and order: linger 0 and 8192 bytes at most, set before
            // connect; SUB first, created, subscribed and connected, so that its subscription starts
            // travelling at once; then REQ. (The monitors run until the sockets close: `using`, each
            // declared after its socket, disposes them first.)
            // [max size] Each agent's network sockets keep their example's limit, sized from its largest
            // frame and set before connect (chat's 8192 bytes here): NetMQ drops a bigger frame together
            // with the connection that sent it.
            // [SUB] A prefix filter on frame 0, set before connect: "" lets posts and rosters through.
            using var sub = new SubscriberSocket();
            sub.Options.Linger = TimeSpan.Zero;
            sub.Options.MaxMsgSize = Chat.MaxMessage;
            sub.Subscribe("");
            using var subMonitor = SocketMonitor.Attach(sub, "chat-broadcasts", config.Monitor);
            Sockets.Connect(sub, config.Broadcasts);
            // [REQ] Strict lockstep: one request in flight (inFlight below), no second send before its
            // reply. The agent has no Lazy Pirate: a lost reply leaves it waiting until STOP.
            using var req = new RequestSocket();
            req.Options.Linger = TimeSpan.Zero;
            req.Options.MaxMsgSize = Chat.MaxMessage;
            using var reqMonitor = SocketMonitor.Attach(req, "chat-requests", config.Monitor);
            Sockets.Connect(req, config.Requests);
            pipe.Report("ready", new { handle = config.Name });

            byte[] me = Encoding.UTF8.GetBytes(config.Name);
            var texts = new Queue<string>(); // posts waiting for their turn
            List<string> roster = [];
            // [slow joiner] Until a first broadcast arrives, our subscription may not have reached the
            // server, and posts would be lost for us: the agent joins only once `live`.
            bool live = false;
            bool joined = false, quorum = false; // quorum: a roster of --chat-clients handles was seen
            bool inFlight = false; // REQ is strict lockstep: one request at a time
            string? posting = null; // the text of the post in flight
            long lastRequest = Environment.TickCount64;

            void UpdateRoster(List<string> handles)
            {
                if (!handles.SequenceEqual(roster))
                {
                    roster = handles;
                    pipe.Report("roster", new { handles });
                }
                quorum |= handles.Count >= config.Clients;
            }

            void Request(params byte[][] request)
            {
                // With nothing in flight REQ always has room: connect made its pipe at once (NetMQ
                // queues before the connection is up), so this send never waits.
                req.SendMultipartBytes(request);
                inFlight = true;
            }

            var items = Sockets.PollIn([pipe.Socket, req, sub]);
            while (true)
            {
                // [poll] The pipe and both sockets at once: a STOP is seen however long the server takes.
                // The only timer is the keep-alive's; without it the wait has no limit (STOP ends it).
                // Then receives that do not wait, one message per ready socket: the pipe, then the
                // sockets in the protocol's order, REQ and SUB. POLLIN is a hint: REQ drops a reply it
                // cannot match inside the receive. No EINTR reaches a .NET poll (StopSignal).
                TimeSpan wait = joined && !inFlight
                    ? TimeSpan.FromMilliseconds(Math.Max(0, lastRequest + Keepalive - Environment.TickCount64))
                    : Timeout.InfiniteTimeSpan;
                var ready = Sockets.Poll(items, wait);
                if (ready.Contains(pipe.Socket) && pipe.Command() is { } command)
                {
                    if (Is(command, "STOP", 1))
                        break;
                    if (!Is(command, "POST", 2) || !IsPostText(command[1]))
                        pipe.BadCommand(command, "not STOP, nor POST and 1 to 4096 bytes of UTF-8");
                    else if (texts.Count >= MaxQueued)
                        pipe.Report("error", new { code = "bad-command", reason = "busy" });
                    else
                        texts.Enqueue(Encoding.UTF8.GetString(command[1]));
                }
                if (ready.Contains(req) && req.ReceiveIfReady() is { } reply)
                {
                    List<string> handles = Chat.ReadReply(reply); // rejected, malformed-reply: fatal
                    inFlight = false;
                    joined = true; // the first reply is the join's
                    lastRequest = Environment.TickCount64;
                    UpdateRoster(handles);
                    if (posting is string text)
                    {
                        sent++;
                        pipe.Report("sent", new { text, roster = handles });
                        posting = null;
                    }
                }
                if (ready.Contains(sub) && sub.ReceiveIfReady() is { } frames)
                {
                    live = true;
                    Chat.Broadcast broadcast = Chat.ReadBroadcast(frames);
                    if (broadcast.Problem is string reason)
                    {
                        pipe.Report("error", new { code = "malformed-broadcast", reason });
                    }
                    else if (broadcast.Roster is { } handles)
                    {
                        UpdateRoster(handles);
                    }
                    else
                    {
                        received++;
                        pipe.Report("received", new { handle = broadcast.Handle, text = broadcast.Text }, Encoding.UTF8.GetBytes(broadcast.Handle));
                    }
                }
                if (live && !inFlight)
                {
                    // Join once subscribed; post once everyone listens; else keep the handle alive.
                    if (!joined)
                    {
                        Request(me);
                    }
                    else if (quorum && texts.Count > 0)
                    {
                        posting = texts.Dequeue();
                        Request(me, Encoding.UTF8.GetBytes(posting));
                    }
                    else if (Environment.TickCount64 >= lastRequest + Keepalive)
                    {
                        Request(me);
                    }
                }
            }
        } // the sockets close here, before `stopped`
        catch (Failure failure)
        {
            pipe.Report("error", new { code = failure.Code, reason = failure.Reason });
        }
        pipe.Report("stopped", new { sent, received });
    }

    // --- ticker agent: a ticker subscriber -------------------------------------------------------

    static void TickerAgent(TickerConfig config)
    {
        using var pipe = new Pipe("ticker");
        int ticks = 0, malformed = 0;
        try
        {
            using var sub = new SubscriberSocket();
            sub.Options.Linger = TimeSpan.Zero;
            sub.Options.MaxMsgSize = Ticker.MaxMessage;
            // Our @name before connect: the publisher counts the desk as a subscriber by it. The symbols
            // come later, as FOLLOW commands; their first ticks may be missed while they travel upstream.
            sub.Subscribe(Encoding.UTF8.GetBytes("@" + config.Name));
            using var ticksMonitor = SocketMonitor.Attach(sub, "ticks", config.Monitor);
            Sockets.Connect(sub, config.Ticks);
            pipe.Report("ready", new { name = config.Name });

            var followed = new List<string>();
            var items = Sockets.PollIn([pipe.Socket, sub]);
            while (true)
            {
                // The pipe and the SUB, with no limit: no timer, and STOP comes up the pipe. Then the
                // SUB, then the pipe, each read without waiting. The ticks first: the poll has already
                // fetched the tick the SUB delivers next, filtered by the subscriptions of that moment;
                // a FORGET served before it would meet it after the unsubscribe.
                var ready = Sockets.Poll(items, Timeout.InfiniteTimeSpan);
                if (ready.Contains(sub) && sub.ReceiveIfReady() is { } frames)
                {
                    if (Ticker.CheckTick(frames, followed, config.Seed, out Ticker.Tick tick) is (string code, string reason))
                    {
                        malformed++;
                        pipe.Report("error", new { code, reason });
                    }
                    else
                    {
                        ticks++;
                        pipe.Report("tick", new
                        {
                            symbol = tick.Symbol, sequence = tick.Sequence, timestamp = tick.Timestamp, price = tick.Price,
                        }, Ascii(tick.Symbol));
                    }
                }
                if (ready.Contains(pipe.Socket) && pipe.Command() is { } command)
                {
                    if (Is(command, "STOP", 1))
                        break;
                    bool follow = Is(command, "FOLLOW", 2), forget = Is(command, "FORGET", 2);
                    string symbol = command.Count == 2 ? Encoding.ASCII.GetString(command[1]) : "";
                    if (!(follow || forget) || !Ticker.IsSymbol(symbol))
                    {
                        pipe.BadCommand(command, "not STOP, nor FOLLOW or FORGET and a symbol");
                    }
                    else if (follow && !followed.Contains(symbol) && followed.Count == Ticker.MaxSymbols)
                    {
                        pipe.Report("error", new { code = "bad-command", reason = "busy" }); // --follow's bound holds for FOLLOW too
                    }
                    else if (follow && !followed.Contains(symbol))
                    {
                        sub.Subscribe(Ticker.Topic(symbol)); // SYMBOL\0: GOOG does not also match GOOGL
                        followed.Add(symbol);
                        pipe.Report("subscribed", new { symbol });
                    }
                    else if (forget && followed.Remove(symbol))
                    {
                        // The SUB filters what it delivers against its current subscriptions: no tick
                        // of this symbol comes after this, even one already queued.
                        sub.Unsubscribe(Ticker.Topic(symbol));
                        pipe.Report("unsubscribed", new { symbol });
                    }
                }
            }
        }
        catch (Failure failure)
        {
            pipe.Report("error", new { code = failure.Code, reason = failure.Reason });
        }
        pipe.Report("stopped", new { ticks, malformed });
    }

    // --- valuation agent: the source and the sink in one thread ----------------------------------

    const int SendBatch = 1000; // orders sent per turn at most, so that results and the pipe get theirs

    static void ValuationAgent(ValuationConfig config)
    {
        using var pipe = new Pipe("valuation");
        // The last trade's books; before any trade, a trade of no orders (every result is unknown-id).
        var trade = new Valuation.Books(0, config.Seed, pipe.Report);
        long total = 0; // of the last trade completed
        try
        {
            // [PUSH] Deals orders round-robin to the connected workers; at every worker's high-water mark,
            // or with none connected, it has no room (mute) and would block, never drop: polled for room.
            using var orders = new PushSocket();
            // [PULL] Fair-queues readies and results from every connected worker.
            using var results = new PullSocket();
            // [PUB] The state, to every worker subscribed at that moment; it never blocks, and drops for
            // a worker not connected yet (hence the heartbeat) or past its HWM.
            using var control = new PublisherSocket();
            foreach (NetMQSocket socket in new NetMQSocket[] { orders, results, control })
            {
                socket.Options.Linger = TimeSpan.Zero;
                socket.Options.MaxMsgSize = Valuation.MaxMessage; // before bind
            }
            // Linger 1 s on the control PUB: `finished` must still reach the workers (they leave when
            // they hear it) if the desk stops right after the trade; closing waits that long for it.
            control.Options.Linger = TimeSpan.FromSeconds(1);
            using var ordersMonitor = SocketMonitor.Attach(orders, "orders", config.Monitor);
            using var resultsMonitor = SocketMonitor.Attach(results, "results", config.Monitor);
            using var controlMonitor = SocketMonitor.Attach(control, "control", config.Monitor);
            Sockets.Bind(orders, config.Orders);
            Sockets.Bind(results, config.Results);
            Sockets.Bind(control, config.Control);
            string ordersAt = orders.Options.LastEndpoint!, resultsAt = results.Options.LastEndpoint!;
            string controlAt = control.Options.LastEndpoint!;
            // The bound endpoints in frames 2-4 too: the main thread reports them, without parsing JSON.
            pipe.Report("ready", new { orders = ordersAt, results = resultsAt, control = controlAt },
                Ascii(ordersAt), Ascii(resultsAt), Ascii(controlAt));

            byte[] state = Valuation.Waiting;
            var workers = new HashSet<string>(); // ready for the next trade
            bool running = false; // from VALUE to `finished`
            ulong count = 0, next = 1; // the trade's orders; the next one to send the first time
            var resends = new Queue<ulong>(); // ids to send again
            List<ulong> resending = [];
            var clock = Stopwatch.StartNew();
            TimeSpan quiet = TimeSpan.FromMilliseconds(config.Quiet), heartbeat = TimeSpan.FromMilliseconds(config.Heartbeat);
            TimeSpan nextBeat = clock.Elapsed, quietSince = clock.Elapsed;

            void SetState(byte[] changed)
            {
                state = changed;
                control.SendFrame(state); // at once; the heartbeat repeats it for late joiners
            }

            void StartWhenReady()
            {
                // Each worker heard a control message before it said ready: its SUB cannot miss `go`.
                if (running && state == Valuation.Waiting && workers.Count >= config.Workers)
                {
                    SetState(Valuation.Go);
                    pipe.Report("started", new { workers = workers.Count });
                    quietSince = clock.Elapsed;
                }
            }

            while (true)
            {
                bool sending = state == Valuation.Go && (next <= count || resends.Count > 0);
                // [poll] The pipe, the PUSH for room (POLLOUT, while orders wait to go out: never a
                // blocking send) and the PULL, at once, up to the next heartbeat or the end of the quiet
                // period if sooner; then, without waiting, the pipe, then the sockets in the protocol's
                // order: orders (at most SendBatch of them, below), then one message from results.
                var items = new List<NetMQSelector.Item> { new(pipe.Socket, PollEvents.PollIn) };
                if (sending)
                    items.Add(new(orders, PollEvents.PollOut));
                items.Add(new(results, PollEvents.PollIn));
                TimeSpan due = state == Valuation.Go && !sending && quietSince + quiet < nextBeat ? quietSince + quiet : nextBeat;
                var ready = Sockets.Poll([.. items], Valuation.Until(due, clock));
                if (ready.Contains(pipe.Socket) && pipe.Command() is { } command)
                {
                    if (Is(command, "STOP", 1))
                        break;
                    ulong n = Is(command, "VALUE", 2) && command[1].Length == 8 ? BinaryPrimitives.ReadUInt64BigEndian(command[1]) : 0;
                    if (n is < 1 or > MaxTrade)
                    {
                        pipe.BadCommand(command, $"not STOP, nor VALUE and an 8-byte number of 1 to {MaxTrade}");
                    }
                    else if (running)
                    {
                        pipe.Report("error", new { code = "bad-command", reason = "busy" });
                    }
                    else
                    {
                        trade = new Valuation.Books((int)n, config.Seed, pipe.Report);
                        (running, count, next) = (true, n, 1);
                        if (state == Valuation.Finished)
                        {
                            // The previous trade's workers have left (or are leaving: a worker that said
                            // ready since then had heard `finished`): this one waits for new ones.
                            workers.Clear();
                            SetState(Valuation.Waiting);
                        }
                        StartWhenReady(); // workers that said ready before the first VALUE count
                    }
                }
                if (sending && ready.Contains(orders))
                {
                    // A send with no wait: false when the PUSH has no room after all (every worker's
                    // queue at its high-water mark, or no worker connected).
                    for (int batch = 0; batch < SendBatch && (next <= count || resends.Count > 0); batch++)
                    {
                        bool firstTime = next <= count;
                        ulong id = firstTime ? next : resends.Peek();
                        // The same bytes every time: the generator is a pure function of the seed and the id.
                        if (!orders.TrySendMultipartBytes(TimeSpan.Zero, Valuation.OrderFrames(Valuation.Generate(config.Seed, id))))
                            break;
                        if (firstTime)
                        {
                            if (++next > count)
                                pipe.Report("sent", new { orders = count });
                        }
                        else
                        {
                            resends.Dequeue();
                            if (resends.Count == 0)
                                pipe.Report("resent", new { ids = resending });
                        }
                    }
                }
                if (ready.Contains(results) && results.ReceiveIfReady() is { } frames)
                {
                    if (frames[0].AsSpan().SequenceEqual(Valuation.Ready))
                    {
                        if (Valuation.OnReady(frames, workers, pipe.Report))
                            StartWhenReady();
                    }
                    else if (trade.OnResult(frames))
                    {
                        quietSince = clock.Elapsed;
                        if (trade.Complete)
                        {
                            SetState(Valuation.Finished);
                            (running, total) = (false, trade.Total);
                            resends.Clear(); // every result is in: nothing is missing any more
                            pipe.Report("complete", new { total, workers = trade.Workers, resent = trade.Resent }, Valuation.I64(total));
                        }
                    }
                }
                TimeSpan now = clock.Elapsed;
                if (sending)
                    quietSince = now; // what has not gone out yet is not lost: the quiet period starts after
                if (state == Valuation.Go && !sending && now - quietSince >= quiet)
                {
                    // Nothing acknowledges a PUSH: what was queued for a worker that died is gone, silently.
                    // Only this thread can tell what is missing, and it is also the source: send them again.
                    resending = trade.Redispatch();
                    foreach (ulong id in resending)
                        resends.Enqueue(id);
                    pipe.Report("resend", new { ids = resending });
                    quietSince = now;
                }
                if (now >= nextBeat)
                {
                    control.SendFrame(state); // level-triggered: a late worker learns the state anyway
                    nextBeat = now + heartbeat;
                }
            }
        }
        catch (Failure failure)
        {
            pipe.Report("error", new { code = failure.Code, reason = failure.Reason });
        }
        pipe.Report("stopped", new { orders = trade.Counted, total });
    }

    // --- query agent: a CHP facade ---------------------------------------------------------------

    static void QueryAgent(QueryConfig config)
    {
        using var pipe = new Pipe("query");
        var facade = new Query.Facade(config.Name, config.Subtrees, 0, 0, pipe.Report);
        try
        {
            // The facade's sockets, options and order: linger 0 (the XPUB's below) and 1024 bytes at most,
            // set before connect; the SUB's subscriptions before it connects.
            // [DEALER] Several requests in flight at once, and replies without REQ's lockstep and without
            // an envelope of its own: the subtree in KTHXBAI says which request a reply answers.
            using var snapshot = new DealerSocket();
            using var updates = new SubscriberSocket();
            // [XPUB] A PUB that hands us the collector's subscription as a message (a frame 0x01): a
            // KVSET goes out only once it has come, since a PUB drops for a subscriber not there yet.
            using var collector = new XPublisherSocket();
            foreach (NetMQSocket socket in new NetMQSocket[] { snapshot, updates, collector })
            {
                socket.Options.Linger = TimeSpan.Zero;
                socket.Options.MaxMsgSize = Query.MaxMessage; // before connect
            }
            collector.Options.Linger = TimeSpan.FromSeconds(1); // the last write may still be queued at STOP
            using var snapshotMonitor = SocketMonitor.Attach(snapshot, "snapshot", config.Monitor);
            using var updatesMonitor = SocketMonitor.Attach(updates, "updates", config.Monitor);
            using var collectorMonitor = SocketMonitor.Attach(collector, "collector", config.Monitor);
            Sockets.Connect(updates, config.Updates);
            Sockets.Connect(snapshot, config.Snapshot);
            Sockets.Connect(collector, config.Collector); // always: a WRITE may come
            foreach (string tree in config.Subtrees) // once connected, so that they go out in this order
                updates.Subscribe(Query.Bytes(tree));
            updates.Subscribe(Query.Hugz); // last: once a HUGZ arrives, every subscription before it is in place
            pipe.Report("ready", new { name = config.Name, subtrees = config.Subtrees });

            bool hugged = false; // a HUGZ came: the snapshots were asked for
            bool collectorLive = false; // the collector's subscription arrived: a KVSET now reaches it
            var writes = new Queue<(string Key, byte[] Value)>(); // WRITEs waiting for both
            var written = new List<(string Key, byte[] Value)>(); // sent, not yet read back
            while (true)
            {
                // The facade's steps, as the sockets polled: until the HUGZ the SUB (dropping what comes);
                // then only the DEALER until every KTHXBAI is in (the SUB's updates wait, in order);
                // then both. The pipe and the collector XPUB all along. No timer: the wait has no limit,
                // and STOP comes up the pipe. Then, without waiting, the pipe, then the sockets in the
                // protocol's order: DEALER, SUB, XPUB.
                bool syncing = facade.Waiting.Count > 0;
                NetMQSocket[] sockets = !hugged ? [pipe.Socket, updates, collector]
                    : syncing ? [pipe.Socket, snapshot, collector]
                    : [pipe.Socket, snapshot, updates, collector];
                var ready = Sockets.Poll(Sockets.PollIn(sockets), Timeout.InfiniteTimeSpan);
                if (ready.Contains(pipe.Socket) && pipe.Command() is { } command)
                {
                    if (Is(command, "STOP", 1))
                        break;
                    if (!Is(command, "WRITE", 3) || !Query.IsKey(command[1]) || facade.SubtreesOf(Query.Text(command[1])).Count == 0
                        || command[2].Length is < 1 or > Query.MaxValue)
                        pipe.BadCommand(command, "not STOP, nor WRITE, a key in our subtrees and a value of 1 to 256 bytes");
                    else if (writes.Count + written.Count >= MaxQueued)
                        pipe.Report("error", new { code = "bad-command", reason = "busy" });
                    else
                        writes.Enqueue((Query.Text(command[1]), command[2]));
                }
                if (ready.Contains(snapshot) && Query.ReceiveMessage(snapshot) is { } reply)
                {
                    if (syncing)
                        facade.OnSnapshot(reply); // KVSYNCs, then a KTHXBAI per subtree: `synced`
                    else
                        pipe.Report("error", new { code = "unexpected-snapshot", reason = $"{Query.Quote(reply[0])} after every KTHXBAI" });
                }
                if (ready.Contains(updates) && Query.ReceiveMessage(updates) is { } update)
                {
                    if (!hugged)
                    {
                        // [slow joiner] Our subscriptions reach the engine some time after connect: the
                        // HUGZ it answers our last one with proves them all live. Until it comes, what
                        // arrives is dropped (the snapshot covers it), and then the snapshots are asked for.
                        if (Query.Is(update[0], Query.Hugz))
                        {
                            hugged = true;
                            foreach (string tree in config.Subtrees) // all requests in flight at once on the one DEALER
                                snapshot.SendMultipartBytes(Query.Icanhaz, Query.Bytes(tree));
                        }
                    }
                    else if (facade.OnUpdate(update))
                    {
                        // Every KVPUB applied, for the page's view of the engine's keys; the key in frame 2,
                        // for the replay, which keeps each key's latest.
                        string applied = Query.Text(update[0]);
                        pipe.Report("applied", new { key = applied, value = Convert.ToHexStringLower(update[4]), sequence = facade.Last },
                            Query.Bytes(applied));
                        // Is it one of our writes, come back from the engine?
                        int index = written.FindIndex(write => write.Key == Query.Text(update[0]) && Query.Is(update[4], write.Value));
                        if (index >= 0)
                        {
                            var (key, value) = written[index];
                            written.RemoveAt(index);
                            pipe.Report("read-back", new { key, value = Convert.ToHexStringLower(value), sequence = facade.Last },
                                Query.Bytes(key), value);
                        }
                    }
                }
                // One frame at a time, whatever its "more" flag: each is one subscription.
                if (ready.Contains(collector) && collector.ReceiveFrameIfReady() is [1])
                    collectorLive = true; // the collector's subscription to everything
                while (hugged && facade.Waiting.Count == 0 && collectorLive && writes.Count > 0)
                {
                    var (key, value) = writes.Dequeue();
                    collector.SendMultipartBytes(Query.KvsetFrames(key, value, 0)); // XPUB, like PUB, never blocks
                    written.Add((key, value));
                    pipe.Report("wrote", new { key, value = Convert.ToHexStringLower(value), ttl = 0 });
                }
            }
        }
        catch (Failure failure)
        {
            pipe.Report("error", new { code = failure.Code, reason = failure.Reason });
        }
        pipe.Report("stopped", facade.Summary());
    }

    // --- the main thread -------------------------------------------------------------------------

    /// <summary>The main thread's view of one agent: its end of the pipe and its thread, nothing else.</summary>
    sealed class Agent(string name)
    {
        public string Name => name;
        public PairSocket? Pipe;
        public Thread? Thread;
        public bool Ready, Told, Stopped; // Told: STOP was sent
        public List<byte[]> ReadyFrames = [];
    }

    static readonly TimeSpan Tenth = TimeSpan.FromMilliseconds(100); // .NET sees a signal's flag this often
    const int StopWait = 5000; // ms for every agent to acknowledge STOP
    const int ProgressMs = 100; // the page's `progress` at most this often

    /// <summary>Send a command down a pipe, without waiting: an agent that has stopped by itself no longer
    /// reads its pipe, and a PAIR with no peer would block the send for good.</summary>
    static void Send(Agent agent, params byte[][] command)
    {
        if (agent.Stopped || !agent.Pipe!.TrySendMultipartBytes(TimeSpan.Zero, command))
            Contract.Log($"desk: {Encoding.ASCII.GetString(command[0])} not sent to the {agent.Name} agent");
    }

    static int RunTrader(TraderArgs args)
    {
        CheckFlags(args);
        // One context for the process: NetMQ's implicit one, which every socket of every thread belongs
        // to. That is what lets an inproc pipe join two threads; NetMQConfig.Cleanup() terminates it.
        // Signals are the main thread's business: .NET runs the handler on a thread of its own, which
        // only raises a flag that the main thread looks at at least every 100 ms.
        using var stop = new StopSignal();
        var deadline = new Deadline(args.Timeout);
        // With --http, the page's STREAM socket, bound before any thread starts (Web.cs).
        Web? web = args.Http == "" ? null : new Web(args.Http, args.Monitor);
        var agents = AgentNames.Select(name => new Agent(name)).ToArray();
        var (chat, ticker, valuation, query) = (agents[0], agents[1], agents[2], agents[3]);
        // Each agent's thread gets its configuration, copied (the records are immutable; the list is a copy).
        ThreadStart[] bodies =
        [
            () => ChatAgent(args.Chat), () => TickerAgent(args.Ticker), () => ValuationAgent(args.Valuation),
            () => QueryAgent(args.Query with { Subtrees = [.. args.Query.Subtrees] }),
        ];

        string? outcome = null; // complete, signal, timeout or agent-failed
        string reason = "";
        void Fail(string code, string why)
        {
            outcome ??= code;
            if (outcome == code)
                reason = why;
        }

        // What the scenario has seen, from frame 0 and frames 2... of the events (never the JSON).
        var ticks = args.Follow.Distinct().ToDictionary(symbol => symbol, _ => 0);
        var followed = new HashSet<string>(args.Follow); // the symbols the ticker part waits for
        var received = new Dictionary<string, int>(); // handle -> posts
        int handed = 0, sent = 0, synced = 0;
        bool forgotten = false, completed = false, readBack = false;
        bool finished = false; // the scenario was done (with the page, the desk serves on)
        string valuationKey = $"/desks/{args.Name}/valuation";
        byte[]? valuationValue = null;
        bool trading = false; // a VALUE was sent and its `complete` has not come: the page's 409
        int results = 0, orders = 0; // the trade's results counted so far, and its size
        int shown = 0; // the results in the last `progress` (-1 after a VALUE: its first, 0 of N, is due)
        long shownAt = 0; // when that was sent

        // Every line the desk writes goes through here: to stdout and, with --http, to the page's event
        // streams, under its replay key (the latest tick of a symbol, applied of a key).
        void Write(byte[] line, string? key = null)
        {
            Contract.Write(line);
            web?.Publish(line, key);
        }

        void Emit(string name, object fields) => Write(Contract.Line(name, fields));

        // The valuation's `result` lines (one per order) go to stdout only; the page gets `progress`
        // instead, at most every 100 ms while the count changes, and right before `complete`.
        void Progress(bool now)
        {
            if (web is null || !(now || results != shown && Environment.TickCount64 >= shownAt + ProgressMs))
                return;
            web.Publish(Contract.Line("progress", new { results, orders }, "valuation"), "progress");
            (shown, shownAt) = (results, Environment.TickCount64);
        }

        void Value(int n)
        {
            var frame = new byte[8];
            BinaryPrimitives.WriteUInt64BigEndian(frame, (ulong)n);
            Send(valuation, Ascii("VALUE"), frame);
            (trading, results, orders, shown) = (true, 0, n, -1);
        }

        // One event: its line to stdout as it came, then what the scenario does with it.
        void OnEvent(Agent agent, List<byte[]> frames, bool acting)
        {
            string name = Encoding.ASCII.GetString(frames[0]);
            if ((agent.Name, name) == ("valuation", "result"))
            {
                results++;
                Contract.Write(frames[1]); // to stdout only: the page gets `progress`
            }
            else
            {
                if ((agent.Name, name) == ("valuation", "complete"))
                    Progress(now: true);
                Write(frames[1], (agent.Name, name) switch
                {
                    ("ticker", "tick") => $"tick {Encoding.ASCII.GetString(frames[2])}",
                    ("query", "applied") => $"applied {Encoding.ASCII.GetString(frames[2])}",
                    _ => null,
                });
            }
            if (name == "stopped")
            {
                agent.Stopped = true;
                if (!agent.Told)
                    Fail("agent-failed", $"the {agent.Name} agent stopped by itself");
            }
            else if (name == "ready" && !agent.Ready)
            {
                (agent.Ready, agent.ReadyFrames) = (true, frames);
            }
            if (!acting)
                return;
            switch ((agent.Name, name))
            {
                case ("ticker", "tick"):
                    string symbol = Encoding.ASCII.GetString(frames[2]);
                    ticks[symbol] = ticks.GetValueOrDefault(symbol) + 1;
                    // Prices drive the chat: a post per tick, while the chat agent's queue has room.
                    if (handed < args.Posts && handed - sent < MaxQueued)
                        Send(chat, Ascii("POST"), Encoding.UTF8.GetBytes(Chat.PostText(args.Name, ++handed)));
                    if (symbol == args.Forget && !forgotten && ticks[symbol] >= args.ForgetAfter)
                    {
                        Send(ticker, Ascii("FORGET"), Ascii(symbol));
                        forgotten = true;
                        followed.Remove(symbol);
                    }
                    break;
                case ("chat", "sent"): // the valuation agent's `sent` is about its orders
                    sent++;
                    break;
                case ("chat", "received"):
                    string handle = Encoding.UTF8.GetString(frames[2]);
                    received[handle] = received.GetValueOrDefault(handle) + 1;
                    break;
                case ("valuation", "complete"):
                    // The valuation goes to the engine: the total, in decimal ASCII.
                    (completed, trading) = (true, false);
                    valuationValue = Ascii(BinaryPrimitives.ReadInt64BigEndian(frames[2]).ToString(CultureInfo.InvariantCulture));
                    Send(query, Ascii("WRITE"), Ascii(valuationKey), valuationValue);
                    break;
                case ("query", "synced"):
                    synced++;
                    break;
                case ("query", "read-back"):
                    readBack |= Encoding.ASCII.GetString(frames[2]) == valuationKey && valuationValue is not null
                        && frames[3].AsSpan().SequenceEqual(valuationValue);
                    break;
            }
        }

        // A page command (Web.cs): the body checked, reported as a `command` line, then handed to the
        // agent, as the scenario's own commands are. 204, or 400 and why, or 409 while a trade runs.
        (int, string) OnCommand(string target, byte[] body)
        {
            string text = Encoding.ASCII.GetString(body); // a symbol or a number: ASCII, or it fails its check
            switch (target)
            {
                case "/follow" or "/forget":
                    if (!Ticker.IsSymbol(text))
                        return (400, $"not a symbol: {Ticker.SymbolRule}");
                    string command = target == "/follow" ? "FOLLOW" : "FORGET";
                    Emit("command", new { command, symbol = text });
                    Send(ticker, Ascii(command), body);
                    // The set of symbols the scenario waits for changes, as with the desk's own FORGET.
                    if (command == "FOLLOW" && followed.Add(text))
                        ticks.TryAdd(text, 0);
                    else if (command == "FORGET" && followed.Remove(text))
                        forgotten |= text == args.Forget;
                    return (204, "");
                case "/chat":
                    if (!IsPostText(body))
                        return (400, $"not a text of 1 to {Chat.MaxText} bytes of UTF-8");
                    Emit("command", new { command = "POST", text = Encoding.UTF8.GetString(body) });
                    Send(chat, Ascii("POST"), body);
                    return (204, "");
                default: // "/value"
                    if (!TryParseTrade(text, out int n) || n < 1)
                        return (400, $"not a number of orders, 1 to {MaxTrade} in decimal digits");
                    if (trading)
                        return (409, "a trade runs: wait for its complete");
                    Emit("command", new { command = "VALUE", orders = n });
                    Value(n);
                    return (204, "");
            }
        }

        // One turn: poll the pipes of the running agents (at most a tenth of a second, never past the
        // deadline) and handle what they sent; the signal flag and the deadline in between. Once the desk
        // serves its page, the STREAM socket too: its requests, its deadlines and the trade's progress.
        void Turn(bool acting)
        {
            if (stop.Raised)
                outcome ??= "signal";
            else if (deadline.Expired)
                Fail("timeout", finished ? $"served the page for {args.Timeout} ms; the scenario was done"
                    : $"not done after {args.Timeout} ms: ticks {string.Join(", ", ticks.Select(entry => $"{entry.Key} {entry.Value}"))}; "
                    + $"{sent} posts sent; received {string.Join(", ", received.Select(entry => $"{entry.Key} {entry.Value}"))}; "
                    + $"complete {completed}; {synced} subtrees synced; read back {readBack}");
            if (outcome is not null)
                return;
            var running = agents.Where(agent => agent.Thread is not null && !agent.Stopped).ToList();
            Web? page = web is { Serving: true } ? web : null;
            // [poll] The pipes of the running agents and the page's STREAM socket at once, a tenth of a
            // second at most (the signal flag, the page's deadlines), never past the deadline; then,
            // without waiting, one event from each ready pipe, in the agents' order, then the page.
            var ready = Sockets.Poll(Sockets.PollIn([.. running.Select(agent => agent.Pipe), page?.Socket]), deadline.Cap(Tenth));
            foreach (Agent agent in running.Where(agent => ready.Contains(agent.Pipe!)))
            {
                if (agent.Pipe!.ReceiveIfReady() is { } frames)
                    OnEvent(agent, frames, acting);
            }
            if (page is not null)
            {
                long now = Environment.TickCount64;
                if (ready.Contains(page.Socket))
                    page.Receive(now, OnCommand); // drains on purpose: up to 100 messages (Web.cs)
                page.Expire(now);
                Progress(now: false);
            }
        }

        bool Done()
        {
            bool tickerDone = (args.Forget == "" || forgotten) && followed.All(symbol => ticks[symbol] >= args.TickCount);
            bool chatDone = sent >= args.Posts
                && (args.Posts == 0 || received.Count(entry => entry.Value >= args.Posts) >= args.Chat.Clients);
            bool valuationDone = args.Trade == 0 || completed;
            bool queryDone = synced >= args.Query.Subtrees.Count && (args.Trade == 0 || readBack);
            return tickerDone && chatDone && valuationDone && queryDone;
        }

        // Start one agent: bind its pipe, start its thread, wait for its `ready`. Binding first is the
        // inproc rule that always works; the `ready` is the agent's proof that its sockets exist.
        void Start(Agent agent, ThreadStart body)
        {
            agent.Pipe = NewPipe();
            agent.Pipe.Bind(PipeEndpoint(agent.Name));
            // A background thread: one that never acknowledges STOP cannot keep the process alive.
            agent.Thread = new Thread(body) { Name = $"desk-{agent.Name}", IsBackground = true };
            agent.Thread.Start();
            while (!agent.Ready && outcome is null)
                Turn(acting: true);
        }

        // Shut-down, steps 1 and 2: STOP to every agent at once (they are independent), then every
        // `stopped`, within 5 s. The events an agent sent before it are still written, in order. The
        // agents started, and those of them that never said `stopped` (none, normally).
        (List<Agent> Started, List<string> Stuck) ShutDown()
        {
            var started = agents.Where(agent => agent.Thread is not null).ToList();
            long giveUp = Environment.TickCount64 + StopWait;
            while (started.Any(agent => !agent.Stopped) && Environment.TickCount64 < giveUp)
            {
                // STOP once the pipe takes it: an agent stopped by the deadline during its start-up may
                // not have connected its end yet, and a PAIR without its peer takes nothing. So the pipes
                // not told yet are polled for room (POLLOUT) as well as for events; the send does not wait.
                var waiting = started.Where(agent => !agent.Stopped).ToList();
                NetMQSelector.Item[] items = [.. waiting.Select(agent =>
                    new NetMQSelector.Item(agent.Pipe!, agent.Told ? PollEvents.PollIn : PollEvents.PollIn | PollEvents.PollOut))];
                Sockets.Poll(items, TimeSpan.FromMilliseconds(Math.Max(0, giveUp - Environment.TickCount64)));
                foreach (var (agent, item) in waiting.Zip(items))
                {
                    if (!agent.Told && item.ResultEvent.HasFlag(PollEvents.PollOut))
                        agent.Told = agent.Pipe!.TrySendMultipartBytes(TimeSpan.Zero, Ascii("STOP"));
                    if (item.ResultEvent.HasFlag(PollEvents.PollIn) && agent.Pipe!.ReceiveIfReady() is { } frames)
                        OnEvent(agent, frames, acting: false);
                }
            }
            return (started, started.Where(agent => !agent.Stopped).Select(agent => agent.Name).ToList());
        }

        // Start-up: the agents one at a time, in order.
        foreach (var (agent, body) in agents.Zip(bodies))
        {
            Start(agent, body);
            if (outcome is not null)
                break;
        }
        if (outcome is null)
        {
            List<byte[]> endpoints = valuation.ReadyFrames;
            Emit("ready", new
            {
                name = args.Name, orders = Encoding.ASCII.GetString(endpoints[2]),
                results = Encoding.ASCII.GetString(endpoints[3]), control = Encoding.ASCII.GetString(endpoints[4]),
                http = web?.Endpoint ?? "",
            });
            web?.Serve(); // the start-up lines end with our `ready`
            foreach (string symbol in args.Follow)
                Send(ticker, Ascii("FOLLOW"), Ascii(symbol));
            if (args.Trade > 0)
                Value(args.Trade);
        }

        // The loop, until the scenario is done, a signal, the deadline or an agent that failed. With the
        // page, the desk serves on after the scenario is done, until a signal, the deadline or a failure.
        while (outcome is null)
        {
            Turn(acting: true);
            if (outcome is null && !finished && Done())
            {
                finished = true;
                if (web is null)
                    outcome = "complete";
            }
        }

        var (started, stuck) = ShutDown();
        if (outcome is "timeout" or "agent-failed")
            Emit("error", new { code = outcome, reason });
        if (stuck.Count > 0)
        {
            // Terminating the context would wait for the sockets of a thread that never closes them (or
            // pull them from under it): exit at once instead.
            Emit("error", new { code = "agent-stuck", reason = $"no stopped within {StopWait} ms from: {string.Join(", ", stuck)}" });
            Environment.Exit(1);
        }
        // 3: join the threads, then close our pipe ends.
        foreach (Agent agent in started)
        {
            agent.Thread!.Join();
            agent.Pipe!.Dispose();
        }
        // The page's socket after the agents (their last lines went to its streams), before the context.
        web?.Dispose();
        web = null;
        // 4: terminate the context: it returns once every socket of every thread is closed and its linger
        // has run out (the valuation's `finished`, the query agent's last write).
        NetMQConfig.Cleanup();
        if (outcome is "timeout" or "agent-failed")
            return 1;
        // 5: done (through Contract.Emit, which drops any socket-event after it; the page is closed).
        Contract.Emit("done", new
        {
            complete = finished,
            agents = agents.Where(agent => agent.Told && agent.Stopped).Select(agent => agent.Name),
        });
        return 0;
    }
}
