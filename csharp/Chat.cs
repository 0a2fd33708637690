// chat: a roster server over REQ/REP with a PUB broadcast channel (examples/chat/PROTOCOL.md).
using System.CommandLine;
using System.Text;
using System.Text.Unicode;
using NetMQ;
using NetMQ.Sockets;

static class Chat
{
    const int MaxHandle = Flags.MaxName; // bytes of UTF-8: a handle is a name flag's value
    internal const int MaxText = 4096; // bytes of UTF-8
    // [max size] 8192 bytes per frame (NetMQ Options.MaxMsgSize), on both sockets of the server and
    // both of a client, set before bind or connect: NetMQ drops a bigger frame together with the
    // connection that sent it, so no peer makes a role allocate without bound (a subscription that a
    // PUB decodes included). The largest legal frame is a 4096-byte text; twice that lets a text a
    // little too long still reach the server's own `text-too-long` rule, and leaves room for CURVE's
    // per-frame overhead.
    internal const long MaxMessage = 8192;

    // The roster is keyed and sorted by the UTF-8 bytes of the handles: .NET's own string order
    // (UTF-16 code units) differs from it for characters above U+FFFF.
    static readonly Comparer<byte[]> ByBytes = Comparer<byte[]>.Create((a, b) => a.AsSpan().SequenceCompareTo(b));

    record ServerArgs(
        string Requests, string Broadcasts, int Timeout, bool Monitor, int Heartbeat, int Expiry, Credentials Credentials);

    record ClientArgs(string Requests, string Broadcasts, int Timeout, bool Monitor, string Name, int Count, int Clients,
        int Keepalive, int Retry, int Pace, Credentials Credentials);

    public static Command Command() =>
        new("chat", "client/server over REQ/REP plus PUB/SUB") { ServerCommand(), ClientCommand() };

    static Command ServerCommand()
    {
        Option<string> requests = Flags.Endpoint("--requests", "tcp://127.0.0.1:5555");
        Option<string> broadcasts = Flags.Endpoint("--broadcasts", "tcp://127.0.0.1:5556");
        Option<int> timeout = Flags.AtLeast("--timeout", 0, 0);
        Option<string> monitor = Flags.Monitor();
        Option<int> heartbeat = Flags.AtLeast("--heartbeat", 1, 100);
        Option<int> expiry = Flags.AtLeast("--expiry", 1, 5000);
        Command server = new("server", "keep the roster and relay posts")
        {
            requests, broadcasts, timeout, monitor, heartbeat, expiry,
        };
        SecurityFlags security = new(server, server: true);
        server.SetAction(p => RunServer(new(
            p.GetValue(requests)!, p.GetValue(broadcasts)!, p.GetValue(timeout), p.GetValue(monitor) == "on",
            p.GetValue(heartbeat), p.GetValue(expiry), security.Read(p))));
        return server;
    }

    static Command ClientCommand()
    {
        Option<string> requests = Flags.Endpoint("--requests", "tcp://127.0.0.1:5555");
        Option<string> broadcasts = Flags.Endpoint("--broadcasts", "tcp://127.0.0.1:5556");
        Option<int> timeout = Flags.AtLeast("--timeout", 0, 30000);
        Option<string> monitor = Flags.Monitor();
        Option<string> name = Flags.Name("--name");
        Option<int> count = Flags.AtLeast("--count", 0, 5);
        Option<int> clients = Flags.AtLeast("--clients", 1, 1);
        Option<int> keepalive = Flags.AtLeast("--keepalive", 1, 1000);
        Option<int> retry = Flags.AtLeast("--retry", 1, 2000);
        Option<int> pace = Flags.AtLeast("--pace", 0, 0);
        Command client = new("client", "join, post --count texts, receive everyone's posts")
        {
            requests, broadcasts, timeout, monitor, name, count, clients, keepalive, retry, pace,
        };
        SecurityFlags security = new(client, server: false);
        client.SetAction(p => RunClient(new(
            p.GetValue(requests)!, p.GetValue(broadcasts)!, p.GetValue(timeout), p.GetValue(monitor) == "on",
            p.GetValue(name)!, p.GetValue(count), p.GetValue(clients), p.GetValue(keepalive), p.GetValue(retry),
            p.GetValue(pace), security.Read(p))));
        return client;
    }

    internal static string PostText(string name, int number) => $"{name} #{number}: héllo wörld 🌍";

    /// <summary>The number i of a text `&lt;handle&gt; #&lt;i&gt;: ...` (1 to 9 ASCII digits), or null.</summary>
    static int? PostNumber(string handle, string text)
    {
        string prefix = $"{handle} #";
        int colon = text.StartsWith(prefix, StringComparison.Ordinal) ? text.IndexOf(':', prefix.Length) : -1;
        string digits = colon < 0 ? "" : text[prefix.Length..colon];
        return digits.Length is >= 1 and <= 9 && digits.All(char.IsAsciiDigit) ? int.Parse(digits) : null;
    }

    // --- server ----------------------------------------------------------------------------------

    /// <summary>The first broken rule of a request, as (code, reason), or null when it is well formed.</summary>
    static (string Code, string Reason)? CheckRequest(List<byte[]> frames)
    {
        if (frames.Count is not (1 or 2))
            return ("frame-count", $"expected 1 or 2 frames, got {frames.Count}");
        if (frames[0].Length == 0)
            return ("empty-handle", "the handle frame is empty");
        if (frames[0].Length > MaxHandle)
            return ("handle-too-long", $"the handle has {frames[0].Length} bytes, at most {MaxHandle}");
        if (frames.Count == 2 && frames[1].Length == 0)
            return ("empty-text", "the text frame is empty");
        if (frames.Count == 2 && frames[1].Length > MaxText)
            return ("text-too-long", $"the text has {frames[1].Length} bytes, at most {MaxText}");
        foreach (var frame in frames)
        {
            try
            {
                Contract.Strict.GetString(frame);
            }
            catch (DecoderFallbackException error)
            {
                return ("invalid-utf8", $"not UTF-8: {error.Message}");
            }
        }
        return null;
    }

    /// <summary>A well-formed post from a handle the server does not know: join first. After a restart,
    /// this is how a posting client learns that the server has forgotten it.</summary>
    static (string Code, string Reason)? CheckPost(List<byte[]> frames, SortedDictionary<byte[], long> roster) =>
        frames.Count == 2 && !roster.ContainsKey(frames[0]) ? ("unknown-handle", "join with [handle] before posting") : null;

    static void RunServer(ServerArgs args)
    {
        using var stop = new StopSignal();
        var deadline = new Deadline(args.Timeout);
        // [REP] Answers each request exactly once, in order: it takes the next request only once the
        // last one has its reply, and keeps the requester's envelope to route that reply back.
        using var requests = new ResponseSocket();
        // [linger] 0 on both sockets: closing drops a reply or a broadcast still queued for a peer,
        // so a client that is gone cannot hold up the exit; the server stops only when told to.
        requests.Options.Linger = TimeSpan.Zero;
        requests.Options.MaxMsgSize = MaxMessage;
        // [PUB] Fan-out: every broadcast goes to every subscriber whose filter matches its frame 0. It
        // never blocks: it drops for a subscriber not connected yet (slow joiner) or past its HWM.
        using var broadcasts = new PublisherSocket();
        // [HWM] PUB queues at most 1000 messages per subscriber (the default high-water mark); at the
        // mark it drops that subscriber's broadcasts instead of blocking the server, where a PUSH or a
        // DEALER would block (the mute state). The scenario stays far below it.
        broadcasts.Options.Linger = TimeSpan.Zero;
        broadcasts.Options.MaxMsgSize = MaxMessage; // PUB sends, but it still decodes subscriptions
        // Security options are read when a connection's handshake starts: set before binding.
        Security.SecureServer(requests, args.Credentials);
        Security.SecureServer(broadcasts, args.Credentials);
        using var requestsMonitor = SocketMonitor.Attach(requests, "requests", args.Monitor);
        using var broadcastsMonitor = SocketMonitor.Attach(broadcasts, "broadcasts", args.Monitor);
        Sockets.Bind(requests, args.Requests);
        Sockets.Bind(broadcasts, args.Broadcasts);
        Contract.Emit("ready", new
        {
            requests = requests.Options.LastEndpoint,
            broadcasts = broadcasts.Options.LastEndpoint,
            security = args.Credentials.Mechanism,
        });

        // handle (UTF-8 bytes, so the roster sorts by bytes) -> last seen, monotonic milliseconds
        var roster = new SortedDictionary<byte[], long>(ByBytes);
        int accepted = 0, rejected = 0;
        long nextBeat = Environment.TickCount64;

        void BroadcastRoster()
        {
            // Frame 0 is empty: no handle is, so subscribers know the server itself is speaking.
            broadcasts.SendMultipartBytes(roster.Keys.Prepend([]));
        }

        while (!stop.Raised)
        {
            if (deadline.Expired)
                throw new Failure("timeout", $"still serving after {args.Timeout} ms");
            var wait = TimeSpan.FromMilliseconds(Math.Max(0, nextBeat - Environment.TickCount64));
            // [poll] Every socket the server serves, with a timeout up to the next heartbeat, then a
            // receive that does not wait: POLLIN is a hint (REP drops a request it cannot route inside
            // the receive: null, back to the loop). That is REP alone here: NetMQ has no ZAP handler,
            // and the monitors run on threads of their own. No EINTR reaches a .NET poll (StopSignal):
            // the stop flag is seen at the next turn, within one heartbeat.
            // [multipart] A request arrives whole or not at all: ReceiveIfReady returns all its frames.
            // Their number is a rule like any other (CheckRequest), never assumed.
            if (requests.PollIn(deadline.Cap(wait)) && requests.ReceiveIfReady() is { } frames)
            {
                if ((CheckRequest(frames) ?? CheckPost(frames, roster)) is (string code, string reason))
                {
                    rejected++;
                    requests.SendMultipartBytes([], Encoding.ASCII.GetBytes(code));
                    Contract.Emit("error", new { code, reason });
                }
                else
                {
                    byte[] handle = frames[0];
                    bool joined = !roster.ContainsKey(handle);
                    roster[handle] = Environment.TickCount64;
                    if (frames.Count == 2)
                    {
                        broadcasts.SendMultipartBytes(frames); // [handle, text], exactly as posted
                        Contract.Emit("posted", new { handle = Contract.Strict.GetString(handle), text = Contract.Strict.GetString(frames[1]) });
                    }
                    accepted++;
                    requests.SendMultipartBytes(roster.Keys);
                    if (joined)
                    {
                        Contract.Emit("joined", new { handle = Contract.Strict.GetString(handle) });
                        BroadcastRoster();
                    }
                }
            }
            long now = Environment.TickCount64;
            if (now >= nextBeat)
            {
                foreach (var silent in roster.Where(entry => now - entry.Value > args.Expiry).Select(entry => entry.Key).ToList())
                {
                    roster.Remove(silent);
                    Contract.Emit("expired", new { handle = Contract.Strict.GetString(silent) });
                }
                BroadcastRoster();
                nextBeat = now + args.Heartbeat;
            }
        }

        Contract.Emit("done", new { requests = accepted, rejected });
    }

    // --- client ----------------------------------------------------------------------------------

    /// <summary>The roster in a reply to one of our requests. An error reply, or one that breaks the reply
    /// table, is fatal: a <see cref="Failure"/>.</summary>
    internal static List<string> ReadReply(List<byte[]> reply)
    {
        if (reply[0].Length == 0)
        {
            if (reply.Count != 2)
                throw new Failure("malformed-reply", $"an error reply has 2 frames, got {reply.Count}");
            // A reason quotes at most 32 bytes of what a peer sent.
            throw new Failure("rejected", $"the server rejected our request: {Encoding.UTF8.GetString(reply[1], 0, Math.Min(32, reply[1].Length))}");
        }
        return RosterOf(reply)
            ?? throw new Failure("malformed-reply", $"a roster frame is not a handle (1 to {MaxHandle} bytes of UTF-8)");
    }

    /// <summary>The frames as a roster, or null if one of them is not a handle. Their order is not
    /// checked (the orchestrator does that), nor are repeats.</summary>
    static List<string>? RosterOf(IEnumerable<byte[]> frames) =>
        frames.All(frame => Flags.IsName(frame)) ? frames.Select(Contract.Strict.GetString).ToList() : null;

    /// <summary>What a broadcast is: a roster (frame 0 empty), a post by a handle, or malformed (the reason).</summary>
    internal readonly record struct Broadcast(List<string>? Roster, string Handle, string Text, string? Problem);

    internal static Broadcast ReadBroadcast(List<byte[]> broadcast)
    {
        static Broadcast Malformed(string reason) => new(null, "", "", reason);
        if (broadcast[0].Length == 0) // from the server itself: the roster
            return RosterOf(broadcast.Skip(1)) is { } handles
                ? new(handles, "", "", null)
                : Malformed($"a roster frame is not a handle (1 to {MaxHandle} bytes of UTF-8)");
        if (broadcast.Count != 2)
            return Malformed($"a post has 2 frames, got {broadcast.Count}");
        if (!Flags.IsName(broadcast[0]))
            return Malformed($"a post's handle is not 1 to {MaxHandle} bytes of UTF-8");
        byte[] text = broadcast[1];
        if (text.Length is < 1 or > MaxText || !Utf8.IsValid(text))
            return Malformed($"a post's text of {text.Length} bytes is not 1 to {MaxText} bytes of UTF-8");
        return new(null, Contract.Strict.GetString(broadcast[0]), Contract.Strict.GetString(text), null);
    }

    static void RunClient(ClientArgs args)
    {
        using var client = new Client(args);
        client.Run();
    }

    sealed class Client : IDisposable
    {
        readonly ClientArgs args;
        readonly byte[] me;
        readonly Deadline deadline;
        SubscriberSocket sub; // not readonly: a rejoin replaces it
        SocketMonitor? subMonitor;
        RequestSocket req; // not readonly: Lazy Pirate replaces it
        SocketMonitor? reqMonitor;
        List<string> roster = [];
        List<string> peers = []; // the roster of step 4: whose posts we wait for, and who must rejoin first
        readonly Dictionary<string, int> last = []; // handle -> the highest post number received from it
        readonly Dictionary<string, HashSet<string>> texts = []; // handle -> the different texts received from it
        int received;
        bool listed; // a roster broadcast listed us since our last join
        bool forgotten; // the server forgot us (it restarted): rejoin before anything else
        long lastRequest = Environment.TickCount64;

        public Client(ClientArgs args)
        {
            this.args = args;
            me = Encoding.UTF8.GetBytes(args.Name);
            deadline = new Deadline(args.Timeout);
            // SUB first, created and connected, so that its subscription starts travelling as early
            // as possible; then REQ.
            sub = OpenBroadcasts();
            req = OpenRequests();
        }

        /// <summary>A new SUB socket, subscribed to everything and connected: at startup, and again for
        /// each rejoin. (NetMQ's monitor has no handshake events, so there is no handshake watcher: the
        /// `--monitor` one is the only monitor, at startup too.)</summary>
        SubscriberSocket OpenBroadcasts()
        {
            // [SUB] It delivers only messages whose frame 0 starts with one of its subscriptions (a
            // prefix filter); "" lets posts and rosters through. It subscribes before it connects, so
            // the subscription goes out with the connection, and it receives nothing before that.
            var socket = new SubscriberSocket();
            socket.Options.Linger = TimeSpan.Zero;
            socket.Options.MaxMsgSize = MaxMessage;
            socket.Subscribe("");
            Security.SecureClient(socket, args.Credentials); // before connect
            subMonitor = SocketMonitor.Attach(socket, "broadcasts", args.Monitor);
            Sockets.Connect(socket, args.Broadcasts);
            return socket;
        }

        void CloseBroadcasts()
        {
            subMonitor?.Dispose(); // a monitor before its socket
            sub.Dispose();
        }

        /// <summary>A new REQ socket, connected: at startup, and again for each request Lazy Pirate resends.</summary>
        RequestSocket OpenRequests()
        {
            // [REQ] Strict lockstep: send, receive, send, receive... One request in flight at a time,
            // and no second send before its reply. So when a reply is lost, the socket is stuck for
            // good: Lazy Pirate throws it away and comes here for a new one.
            var socket = new RequestSocket();
            // [linger] 0: closing drops a request still queued for a server that is gone, so neither
            // a Lazy Pirate retry nor the exit waits for it.
            socket.Options.Linger = TimeSpan.Zero;
            socket.Options.MaxMsgSize = MaxMessage;
            Security.SecureClient(socket, args.Credentials); // before connect
            reqMonitor = SocketMonitor.Attach(socket, "requests", args.Monitor);
            Sockets.Connect(socket, args.Requests);
            return socket;
        }

        void CloseRequests()
        {
            reqMonitor?.Dispose(); // a monitor before its socket
            req.Dispose();
        }

        public void Dispose()
        {
            CloseBroadcasts();
            CloseRequests();
        }

        /// <summary>One round trip, Lazy Pirate style; returns the roster of the reply, or null when the
        /// server answered a post with `unknown-handle` (rejoin, then send it again).</summary>
        List<string>? Request(params byte[][] request)
        {
            req.SendMultipartBytes(request);
            List<byte[]>? reply;
            while ((reply = WaitForReply()) is null)
            {
                // The reply is lost, perhaps with the server. Close the REQ (linger 0 drops what it
                // still holds) and send the same request again on a new one.
                Contract.Emit("retried", new { text = request.Length == 2 ? Encoding.UTF8.GetString(request[1]) : "" });
                CloseRequests();
                req = OpenRequests();
                req.SendMultipartBytes(request);
            }
            lastRequest = Environment.TickCount64;
            if (request.Length == 2 && reply is [[], var code] && code.AsSpan().SequenceEqual("unknown-handle"u8))
            {
                forgotten = true;
                return null;
            }
            List<string> handles = ReadReply(reply);
            UpdateRoster(handles);
            return handles;
        }

        /// <summary>The reply, or null once --retry ms passed without one; `no-reply` at the deadline.</summary>
        List<byte[]>? WaitForReply()
        {
            long until = Environment.TickCount64 + args.Retry;
            long wait;
            while ((wait = until - Environment.TickCount64) > 0)
            {
                if (deadline.Expired)
                    throw new Failure("no-reply", $"no reply from the server within {args.Timeout} ms");
                // [poll] REQ alone, for at most the time left of --retry, never past the deadline; then a
                // receive that does not wait. POLLIN is a hint: REQ drops a reply it cannot match inside
                // the receive (null), and it is back to the poll.
                if (req.PollIn(deadline.Cap(TimeSpan.FromMilliseconds(wait))) && req.ReceiveIfReady() is { } reply)
                    return reply;
            }
            return null;
        }

        List<string> Join()
        {
            listed = false;
            return Request(me)!; // a join is no post: never unknown-handle
        }

        void UpdateRoster(List<string> handles)
        {
            if (!handles.SequenceEqual(roster))
            {
                roster = handles;
                Contract.Emit("roster", new { handles });
            }
        }

        void OnBroadcast(List<byte[]> frames)
        {
            Broadcast broadcast = ReadBroadcast(frames);
            if (broadcast.Problem is string reason)
            {
                Contract.Emit("error", new { code = "malformed-broadcast", reason });
            }
            else if (broadcast.Roster is { } handles)
            {
                UpdateRoster(handles);
                if (handles.Contains(args.Name))
                {
                    listed = true;
                }
                else if (listed) // after one with us, a roster without us: the server has forgotten us
                {
                    (forgotten, listed) = (true, false);
                }
            }
            else
            {
                OnPost(broadcast.Handle, broadcast.Text);
            }
        }

        void OnPost(string handle, string text)
        {
            received++;
            if (!texts.TryGetValue(handle, out var seen))
                texts[handle] = seen = new HashSet<string>(StringComparer.Ordinal);
            seen.Add(text);
            Contract.Emit("received", new { handle, text });
            if (PostNumber(handle, text) is int number)
            {
                int previous = last.GetValueOrDefault(handle);
                for (int missing = previous + 1; missing < Math.Min(number, args.Count + 1); missing++) // bounded by --count
                    Contract.Emit("missed", new { handle, number = missing }); // lost with a server that died
                last[handle] = Math.Max(previous, number);
            }
        }

        /// <summary>--count different texts from <paramref name="peer"/>, or its post numbered --count (posts
        /// before it may have been lost with a server that died).</summary>
        bool HeardAll(string peer) =>
            (texts.TryGetValue(peer, out var seen) ? seen.Count : 0) >= args.Count || last.GetValueOrDefault(peer) >= args.Count;

        /// <summary>Handle one broadcast, or send a keep-alive when one is due, whichever comes first; or
        /// rejoin, if the server has forgotten us. Returns by <paramref name="until"/> (ms) if given.</summary>
        void Serve(long? until = null)
        {
            if (forgotten)
            {
                Rejoin();
                return;
            }
            if (deadline.Expired)
                throw new Failure("timeout", $"not done after {args.Timeout} ms");
            long due = lastRequest + args.Keepalive;
            var wait = TimeSpan.FromMilliseconds(Math.Max(0, Math.Min(due, until ?? due) - Environment.TickCount64));
            // [multipart] A broadcast arrives whole or not at all: all its frames, which ReadBroadcast
            // counts (a post is exactly 2) before it reads any.
            if (sub.PollIn(deadline.Cap(wait)) && sub.ReceiveIfReady() is { } frames)
                OnBroadcast(frames);
            // The timer, even after a broadcast (a stream of them must not starve it), unless that
            // broadcast told us the server forgot us: then the next turn rejoins, and a keep-alive now
            // would join us without the slow joiner's wait.
            if (!forgotten && Environment.TickCount64 >= due)
                Request(me); // keep-alive: silent handles expire from the roster
        }

        /// <summary>The server forgot us: join again as a newcomer (PROTOCOL.md, "Restarts").</summary>
        void Rejoin()
        {
            // What the old SUB already holds came from the old server: take it, then throw the socket
            // away. Which of its broadcasts are older than our join, nothing tells; a new SUB holds none.
            // A drain on purpose (PROTOCOL.md, "Restarts"), bounded by what the socket holds: at most
            // its high-water mark of 1000 broadcasts, and whatever arrives while it is read.
            while (sub.ReceiveIfReady() is { } frames)
                OnBroadcast(frames);
            CloseBroadcasts();
            sub = OpenBroadcasts();
            // Slow joiner, again: the new SUB's first broadcast comes from the server that forgot us,
            // once our subscription has reached it. Until then, no request, not even a keep-alive.
            OnBroadcast(WaitForFirstBroadcast());
            forgotten = false;
            Contract.Emit("rejoined", new { handles = Join() });
            // Everyone listens before anyone talks, again: every peer rejoins the same way.
            while (!peers.All(roster.Contains))
                Serve();
        }

        /// <summary>The first broadcast's frames, polling the SUB a keep-alive at a time; `timeout` at the
        /// deadline. A refused handshake looks the same as a silent server: NetMQ's monitor has no
        /// handshake events, so a client with the wrong keys hears nothing and ends with `timeout`
        /// (libzmq's clients say `refused`).</summary>
        List<byte[]> WaitForFirstBroadcast()
        {
            while (true)
            {
                // [slow joiner] A subscription reaches the server some time after connect: what the
                // server publishes before that is lost for us. The first broadcast that arrives proves
                // the subscription live, and the server sends a roster at least every heartbeat.
                if (sub.PollIn(deadline.Cap(TimeSpan.FromMilliseconds(args.Keepalive))) && sub.ReceiveIfReady() is { } frames)
                    return frames;
                if (deadline.Expired)
                    throw new Failure("timeout", "no broadcast from the server");
            }
        }

        public void Run()
        {
            // Slow joiner: until a first broadcast arrives, our subscription may not have reached the
            // server and posts would be dropped for us. The server broadcasts at least every heartbeat.
            OnBroadcast(WaitForFirstBroadcast());
            Join();
            Contract.Emit("ready", new { handle = args.Name, security = args.Credentials.Mechanism });

            // Everyone listens before anyone talks: wait for --clients handles, all subscribed.
            while (roster.Count < args.Clients)
                Serve();
            peers = roster.ToList();
            Contract.Log($"{args.Name}: {peers.Count} peers, posting {args.Count} texts");

            for (int number = 1; number <= args.Count;)
            {
                string text = PostText(args.Name, number);
                if (Request(me, Encoding.UTF8.GetBytes(text)) is not { } handles)
                {
                    Rejoin(); // unknown-handle: rejoin, then the same post again
                    continue;
                }
                Contract.Emit("sent", new { text, roster = handles });
                number++;
                long until = Environment.TickCount64 + args.Pace; // --pace: broadcasts are served meanwhile
                while (Environment.TickCount64 < until)
                    Serve(until);
            }

            while (!peers.All(HeardAll))
                Serve();
            Contract.Emit("done", new { sent = args.Count, received });
        }
    }
}
