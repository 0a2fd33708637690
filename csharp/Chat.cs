// chat: a roster server over REQ/REP with a PUB broadcast channel (examples/chat/PROTOCOL.md).
using System.CommandLine;
using System.Text;
using System.Text.Unicode;
using NetMQ;
using NetMQ.Sockets;

static class Chat
{
    const int MaxHandle = Flags.MaxName; // bytes of UTF-8, as for every name flag
    internal const int MaxText = 4096; // bytes of UTF-8
    // ZMQ_MAXMSGSIZE (NetMQ Options.MaxMsgSize) on all four sockets: NetMQ itself drops a bigger frame,
    // and the sender's connection with it, so no peer makes us allocate without bound (subscriptions
    // included). The largest legal frame is a 4096-byte text; twice that lets a text too long still
    // reach our own `text-too-long` rule, and leaves room for CURVE's overhead on every frame.
    internal const long MaxMessage = 8192;

    // The roster is sorted by the UTF-8 bytes of the handles: .NET's UTF-16 order differs above U+FFFF.
    static readonly Comparer<byte[]> ByBytes = Comparer<byte[]>.Create((a, b) => a.AsSpan().SequenceCompareTo(b));

    record ServerArgs(
        string Requests, string Broadcasts, int Timeout, bool Monitor, int Heartbeat, int Expiry, Security Security);

    record ClientArgs(string Requests, string Broadcasts, int Timeout, bool Monitor, string Name, int Count, int Clients,
        int Keepalive, Security Security);

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
        Command client = new("client", "join, post --count texts, receive everyone's posts")
        {
            requests, broadcasts, timeout, monitor, name, count, clients, keepalive,
        };
        SecurityFlags security = new(client, server: false);
        client.SetAction(p => RunClient(new(
            p.GetValue(requests)!, p.GetValue(broadcasts)!, p.GetValue(timeout), p.GetValue(monitor) == "on",
            p.GetValue(name)!, p.GetValue(count), p.GetValue(clients), p.GetValue(keepalive), security.Read(p))));
        return client;
    }

    internal static string PostText(string name, int number) => $"{name} #{number}: héllo wörld 🌍";

    // --- security (PROTOCOL.md, "Security") ----------------------------------------------------
    // Both sockets of a role use the same mechanism. The options are read when a connection's
    // handshake starts, so they are set before bind or connect. Under null there is nothing to set.

    /// <summary>A CURVE server holds its own keypair (NetMQ derives the public half from the secret).
    /// Any client that knows the server's public key gets in: NetMQ has no ZAP to narrow that down.</summary>
    static void SecureServer(NetMQSocket socket, Security security)
    {
        if (security.Mechanism != "curve") return;
        socket.Options.CurveServer = true;
        socket.Options.CurveCertificate = NetMQCertificate.CreateFromSecretKey(security.CurveSecret!);
    }

    /// <summary>A CURVE client proves itself with its own keypair and trusts only the server whose
    /// public key it was given: a server without the matching secret key fails the handshake.</summary>
    static void SecureClient(NetMQSocket socket, Security security)
    {
        if (security.Mechanism != "curve") return;
        socket.Options.CurveCertificate = new NetMQCertificate(security.CurveSecret!, security.CurvePublic!);
        socket.Options.CurveServerCertificate = NetMQCertificate.FromPublicKey(security.CurveServer!);
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
                Events.Strict.GetString(frame);
            }
            catch (DecoderFallbackException error)
            {
                return ("invalid-utf8", $"not UTF-8: {error.Message}");
            }
        }
        return null;
    }

    static void RunServer(ServerArgs args)
    {
        using var stop = new StopSignal();
        var deadline = new Deadline(args.Timeout);
        // REP answers each request exactly once, in order: the library keeps the lockstep for us.
        using var requests = new ResponseSocket();
        requests.Options.Linger = TimeSpan.Zero;
        requests.Options.MaxMsgSize = MaxMessage;
        // PUB sends every broadcast to every subscriber whose filter matches; it never blocks, and it
        // drops for a subscriber that is not connected yet (slow joiner) or whose queue is full (HWM).
        using var broadcasts = new PublisherSocket();
        broadcasts.Options.Linger = TimeSpan.Zero;
        broadcasts.Options.MaxMsgSize = MaxMessage; // PUB sends, but it still decodes subscriptions
        SecureServer(requests, args.Security);
        SecureServer(broadcasts, args.Security);
        using var requestsMonitor = SocketMonitor.Attach(requests, "requests", args.Monitor);
        using var broadcastsMonitor = SocketMonitor.Attach(broadcasts, "broadcasts", args.Monitor);
        Sockets.Bind(requests, args.Requests);
        Sockets.Bind(broadcasts, args.Broadcasts);
        Events.Emit("ready", new
        {
            requests = requests.Options.LastEndpoint,
            broadcasts = broadcasts.Options.LastEndpoint,
            security = args.Security.Mechanism,
        });

        // handle (UTF-8 bytes, so the roster sorts by bytes) -> last seen, monotonic milliseconds
        var roster = new SortedDictionary<byte[], long>(ByBytes);
        int accepted = 0, rejected = 0;
        long nextBeat = Environment.TickCount64;
        var frames = new List<byte[]>();

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
            // A receive with a timeout (a poll) instead of a blocking one: the heartbeat, the deadline
            // and the stop flag all get their turn without a second thread.
            if (requests.TryReceiveMultipartBytes(deadline.Cap(wait), ref frames))
            {
                if (CheckRequest(frames) is (string code, string reason))
                {
                    rejected++;
                    requests.SendMultipartBytes([], Encoding.ASCII.GetBytes(code));
                    Events.Emit("error", new { code, reason });
                }
                else
                {
                    byte[] handle = frames[0];
                    bool joined = !roster.ContainsKey(handle);
                    roster[handle] = Environment.TickCount64;
                    if (frames.Count == 2)
                    {
                        broadcasts.SendMultipartBytes(frames); // [handle, text], exactly as posted
                        Events.Emit("posted", new { handle = Events.Strict.GetString(handle), text = Events.Strict.GetString(frames[1]) });
                    }
                    accepted++;
                    requests.SendMultipartBytes(roster.Keys);
                    if (joined)
                    {
                        Events.Emit("joined", new { handle = Events.Strict.GetString(handle) });
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
                    Events.Emit("expired", new { handle = Events.Strict.GetString(silent) });
                }
                BroadcastRoster();
                nextBeat = now + args.Heartbeat;
            }
        }

        Events.Emit("done", new { requests = accepted, rejected });
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
        frames.All(frame => Flags.IsName(frame)) ? frames.Select(Events.Strict.GetString).ToList() : null;

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
        return new(null, Events.Strict.GetString(broadcast[0]), Events.Strict.GetString(text), null);
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
        readonly SubscriberSocket sub = new();
        readonly RequestSocket req = new();
        readonly SocketMonitor? subMonitor, reqMonitor;
        List<string> roster = [];
        readonly Dictionary<string, int> received = [];
        long lastRequest = Environment.TickCount64;
        List<byte[]> frames = [];

        public Client(ClientArgs args)
        {
            this.args = args;
            me = Encoding.UTF8.GetBytes(args.Name);
            deadline = new Deadline(args.Timeout);
            // SUB first, so that its subscription starts travelling as early as possible.
            sub.Options.Linger = TimeSpan.Zero;
            sub.Options.MaxMsgSize = MaxMessage;
            sub.Subscribe(""); // a prefix filter on frame 0; "" lets posts and rosters through
            SecureClient(sub, args.Security);
            subMonitor = SocketMonitor.Attach(sub, "broadcasts", args.Monitor);
            Sockets.Connect(sub, args.Broadcasts);
            // REQ enforces send, receive, send, receive...: one request in flight at a time.
            req.Options.Linger = TimeSpan.Zero;
            req.Options.MaxMsgSize = MaxMessage;
            SecureClient(req, args.Security);
            reqMonitor = SocketMonitor.Attach(req, "requests", args.Monitor);
            Sockets.Connect(req, args.Requests);
        }

        public void Dispose()
        {
            subMonitor?.Dispose(); // a monitor before its socket
            reqMonitor?.Dispose();
            sub.Dispose();
            req.Dispose();
        }

        /// <summary>One lockstep round trip; returns the roster of the reply.</summary>
        List<string> Request(params byte[][] request)
        {
            req.SendMultipartBytes(request);
            var left = deadline.Remaining; // infinite when there is no --timeout
            var reply = new List<byte[]>();
            if (!req.TryReceiveMultipartBytes(left, ref reply))
                throw new Failure("no-reply", $"no reply from the server within {left.TotalMilliseconds} ms");
            lastRequest = Environment.TickCount64;
            List<string> handles = ReadReply(reply);
            UpdateRoster(handles);
            return handles;
        }

        void UpdateRoster(List<string> handles)
        {
            if (!handles.SequenceEqual(roster))
            {
                roster = handles;
                Events.Emit("roster", new { handles });
            }
        }

        void OnBroadcast(List<byte[]> frames)
        {
            Broadcast broadcast = ReadBroadcast(frames);
            if (broadcast.Problem is string reason)
            {
                Events.Emit("error", new { code = "malformed-broadcast", reason });
            }
            else if (broadcast.Roster is { } handles)
            {
                UpdateRoster(handles);
            }
            else
            {
                received[broadcast.Handle] = received.GetValueOrDefault(broadcast.Handle) + 1;
                Events.Emit("received", new { handle = broadcast.Handle, text = broadcast.Text });
            }
        }

        /// <summary>Handle one broadcast, or send a keep-alive when one is due, whichever comes first.</summary>
        void WaitForBroadcast()
        {
            if (deadline.Expired)
                throw new Failure("timeout", $"not done after {args.Timeout} ms");
            long due = lastRequest + args.Keepalive;
            var wait = TimeSpan.FromMilliseconds(Math.Max(0, due - Environment.TickCount64));
            if (sub.TryReceiveMultipartBytes(deadline.Cap(wait), ref frames))
                OnBroadcast(frames);
            else if (Environment.TickCount64 >= due)
                Request(me); // keep-alive: silent handles expire from the roster
        }

        public void Run()
        {
            // Slow joiner: until a first broadcast arrives, our subscription may not have reached the
            // server and posts would be dropped for us. The server broadcasts at least every heartbeat.
            // A refused handshake looks the same: NetMQ's monitor has no handshake events, so a client
            // with the wrong keys hears nothing and ends with `timeout` (libzmq's clients say `refused`).
            while (!sub.TryReceiveMultipartBytes(deadline.Cap(TimeSpan.FromMilliseconds(args.Keepalive)), ref frames))
            {
                if (deadline.Expired)
                    throw new Failure("timeout", "no broadcast from the server");
            }
            OnBroadcast(frames);
            Request(me); // join
            Events.Emit("ready", new { handle = args.Name, security = args.Security.Mechanism });

            // Everyone listens before anyone talks: wait for --clients handles, all subscribed.
            while (roster.Count < args.Clients)
                WaitForBroadcast();
            var peers = roster.ToList();
            Events.Log($"{args.Name}: {peers.Count} peers, posting {args.Count} texts");

            for (int number = 1; number <= args.Count; number++)
            {
                string text = PostText(args.Name, number);
                var handles = Request(me, Encoding.UTF8.GetBytes(text));
                Events.Emit("sent", new { text, roster = handles });
            }

            while (peers.Any(peer => received.GetValueOrDefault(peer) < args.Count))
                WaitForBroadcast();
            Events.Emit("done", new { sent = args.Count, received = received.Values.Sum() });
        }
    }
}
