// web: the desk's own page, HTTP/1.1 over a ZMQ_STREAM socket (examples/desk/PROTOCOL.md, "The web page").
//
// STREAM is the socket for a peer that does not speak ZeroMQ: raw TCP both ways, no ZMTP, no framing.
// Every message is [identity, bytes]: the identity is the one the socket gave that TCP connection, the
// bytes whatever one read returned (a request may come in pieces, or several in one). libzmq reports a
// connect and a disconnect as [identity, ""]; NetMQ 4.0.4.5 reports neither, so a connection is known
// at its first message and forgotten at an empty one, at a send that finds it gone (host unreachable) or
// at its deadline. The desk's main thread owns the socket, polls it with its pipes and never waits on it.
using System.Text;
using NetMQ;
using NetMQ.Sockets;

sealed class Web : IDisposable
{
    // --- the page --------------------------------------------------------------------------------

    /// <summary>examples/desk/page.html, built into the assembly (btb.csproj), read once, served byte for byte.</summary>
    static readonly byte[] Page = ReadPage();

    static byte[] ReadPage()
    {
        using Stream stream = typeof(Web).Assembly.GetManifestResourceStream("page.html")!;
        using var copy = new MemoryStream();
        stream.CopyTo(copy);
        return copy.ToArray();
    }

    // --- limits: every connection's memory is bounded by them --------------------------------------

    const int MaxHead = 8192; // bytes of request line and headers, the blank line included, or 431
    const int MaxBody = 4096; // a Content-Length above this is 413
    const int MaxConnections = 256; // known at once; a new one beyond is closed at once, unanswered
    const int RequestMs = 5000; // for a whole request, from its first message; then 408
    const int CloseMs = 1000; // after a response, for the client to close first; then we close
    const int MaxReads = 100; // messages read per turn, so that the pipes get theirs
    const int SendHwm = 1000; // messages queued per connection: the bound on what one slow reader holds
    const int MaxLines = 1000; // lines in the replay's ring (and its start-up lines at most)
    const int MaxKeys = 256; // keys of the replay's latest lines

    /// <summary>What the desk answers a page command: 204, or 400 or 409 and why.</summary>
    public delegate (int Code, string Reason) Command(string target, byte[] body);

    // Closing: an event stream that could not take an event; it gets no more, and is closed once it can be.
    enum Stage { Request, Answered, Stream, Closing }

    /// <summary>One TCP connection: its request so far, its deadline and where it stands.</summary>
    sealed class Connection(byte[] identity, long deadline)
    {
        public readonly byte[] Identity = identity;
        public byte[] Buffer = [];
        public int Length;
        public long Deadline = deadline;
        public Stage Stage = Stage.Request;

        /// <summary>Keep what came, up to the largest request there can be: the rest is never read.</summary>
        public void Append(byte[] data)
        {
            int take = Math.Min(data.Length, MaxHead + MaxBody - Length);
            if (Length + take > Buffer.Length)
                Array.Resize(ref Buffer, Math.Min(MaxHead + MaxBody, Math.Max(Length + take, 2 * Buffer.Length)));
            data.AsSpan(0, take).CopyTo(Buffer.AsSpan(Length));
            Length += take;
        }
    }

    readonly StreamSocket socket = new();
    readonly SocketMonitor? monitor;
    readonly Dictionary<string, Connection> connections = []; // by identity, in hex
    // The replay: what a new event stream gets first. The bytes the desk wrote, kept here.
    readonly List<byte[]> startup = []; // the lines written before the desk was serving, and its `ready`
    readonly Queue<byte[]> ring = new(); // the last lines since
    readonly OrderedDictionary<string, byte[]> latest = []; // "tick SYMBOL", "applied KEY", "progress": its latest line

    /// <summary>Bind the STREAM socket: before any agent thread starts, so a failed bind fails the desk
    /// at once (`error` `bind`, exit 1).</summary>
    public Web(string endpoint, bool monitor)
    {
        // Linger 0: at close, an open event stream has nothing worth waiting for.
        socket.Options.Linger = TimeSpan.Zero;
        // Send high-water mark 1000 messages per connection, on purpose: a reader that does not read
        // makes its connection refuse a send there (TrySend false), and the desk drops that stream.
        socket.Options.SendHighWatermark = SendHwm;
        // --monitor on: the page's connections too (its flag gives its endpoint).
        this.monitor = SocketMonitor.Attach(socket, "http", monitor);
        try
        {
            Sockets.Bind(socket, endpoint);
        }
        catch
        {
            this.monitor?.Dispose();
            socket.Dispose();
            throw;
        }
        Endpoint = socket.Options.LastEndpoint!; // the port a wildcard got
    }

    public string Endpoint { get; }

    public NetMQSocket Socket => socket;

    /// <summary>From the desk's `ready` on: the lines go to the ring, and the socket is polled.</summary>
    public bool Serving { get; private set; }

    public void Serve() => Serving = true;

    /// <summary>A --http value: a tcp:// endpoint, the port a number or * (a wildcard), or nothing.</summary>
    public static bool TryParseEndpoint(string text, out string endpoint)
    {
        endpoint = text;
        if (text == "")
            return true;
        if (!text.StartsWith("tcp://", StringComparison.Ordinal))
            return false;
        string address = text["tcp://".Length..];
        int colon = address.LastIndexOf(':');
        string port = colon < 0 ? "" : address[(colon + 1)..];
        return colon > 0 && !address[..colon].Any(char.IsWhiteSpace)
            && (port == "*" || port.Length is >= 1 and <= 5 && port.All(char.IsAsciiDigit) && int.Parse(port) <= 65535);
    }

    // --- sending: never blocking ------------------------------------------------------------------

    /// <summary>[identity, bytes], without waiting: a blocking send to a slow reader would freeze the
    /// whole desk. The identity frame picks the connection; NetMQ refuses it (false) when that
    /// connection's queue is at the high-water mark, and throws HostUnreachableException when the
    /// connection is gone (<paramref name="gone"/>). Empty bytes close the connection.</summary>
    bool Send(byte[] identity, byte[] bytes, out bool gone)
    {
        gone = false;
        try
        {
            if (!socket.TrySendFrame(TimeSpan.Zero, identity, more: true))
                return false;
            socket.TrySendFrame(TimeSpan.Zero, bytes); // the connection took the identity: it takes this too
            return true;
        }
        catch (HostUnreachableException)
        {
            gone = true;
            return false;
        }
    }

    /// <summary>Send on a known connection: whether it took the bytes. One found gone is forgotten.</summary>
    bool Send(string key, Connection connection, byte[] bytes)
    {
        bool taken = Send(connection.Identity, bytes, out bool gone);
        if (gone)
            connections.Remove(key);
        return taken;
    }

    /// <summary>Close a connection: [identity, ""]. NetMQ drops what is still queued for it (and .NET
    /// resets the TCP connection, losing what the kernel still held), which is why the desk never closes
    /// right after a response but at the deadline after it, long flushed. A queue with no room for the
    /// close yet: tried again next turn (the deadline has passed, or the stream is closing).</summary>
    void Close(string key, Connection connection)
    {
        if (Send(key, connection, []))
            connections.Remove(key);
    }

    /// <summary>Send a response: the client has 1000 ms to close; an event stream stays open. No room
    /// even for a response: closed as soon as it can be.</summary>
    void Answer(string key, Connection connection, byte[] response, long now, bool stream = false) =>
        (connection.Stage, connection.Deadline) = !Send(key, connection, response) ? (Stage.Answered, now)
            : stream ? (Stage.Stream, long.MaxValue) : (Stage.Answered, now + CloseMs);

    /// <summary>At the limit of connections, close the one answered longest ago, before its deadline. A
    /// client closes after its response (Connection: close), and libzmq then frees its place at once;
    /// NetMQ tells nothing of it, so hundreds of quick requests a second would fill every place with
    /// connections long gone. Closing one that is gone only finds it gone.</summary>
    bool MakeRoom()
    {
        string? key = connections.Where(entry => entry.Value.Stage == Stage.Answered)
            .OrderBy(entry => entry.Value.Deadline).Select(entry => entry.Key).FirstOrDefault();
        if (key is null)
            return false;
        Close(key, connections[key]);
        return connections.Count < MaxConnections;
    }

    // --- receiving: the HTTP subset ----------------------------------------------------------------

    /// <summary>Read what the poll reported: at most 100 messages, each receive non-blocking (POLLIN
    /// is a hint). A request whose last byte came is answered, a page command through
    /// <paramref name="onCommand"/>.</summary>
    public void Receive(long now, Command onCommand)
    {
        for (int read = 0; read < MaxReads; read++)
        {
            if (!socket.TryReceiveFrameBytes(TimeSpan.Zero, out byte[]? identity, out bool more))
                return;
            byte[]? data = null; // frame 1, which arrives with frame 0; a STREAM message has no other
            while (more && socket.TryReceiveFrameBytes(TimeSpan.Zero, out byte[]? frame, out more))
                data ??= frame;
            data ??= [];
            string key = Convert.ToHexString(identity);
            if (!connections.TryGetValue(key, out Connection? connection))
            {
                if (connections.Count >= MaxConnections && !MakeRoom())
                {
                    Send(identity, [], out _); // closed at once, unanswered
                    continue;
                }
                connection = new Connection(identity, now + RequestMs);
                connections[key] = connection;
            }
            else if (data.Length == 0)
            {
                connections.Remove(key); // libzmq: the peer closed
                continue;
            }
            // One request per connection: what comes after it is ignored.
            if (connection.Stage != Stage.Request || data.Length == 0)
                continue;
            connection.Append(data);
            if (Respond(connection, onCommand) is (byte[] response, bool stream))
                Answer(key, connection, response, now, stream);
        }
    }

    static readonly Dictionary<int, string> Reasons = new()
    {
        [200] = "OK", [204] = "No Content", [400] = "Bad Request", [404] = "Not Found", [405] = "Method Not Allowed",
        [408] = "Request Timeout", [409] = "Conflict", [411] = "Length Required", [413] = "Content Too Large",
        [431] = "Request Header Fields Too Large", [501] = "Not Implemented", [505] = "HTTP Version Not Supported",
    };

    /// <summary>A response's bytes: status line, headers, blank line, body. Every one closes the
    /// connection (one request per connection); 204 and the event stream have no Content-Length.</summary>
    static byte[] Response(int code, string? type, byte[] body, string? allow = null, bool stream = false)
    {
        var head = new StringBuilder($"HTTP/1.1 {code} {Reasons[code]}\r\n");
        if (type is not null)
            head.Append($"Content-Type: {type}\r\n");
        if (code != 204 && !stream)
            head.Append($"Content-Length: {body.Length}\r\n");
        head.Append("Cache-Control: no-store\r\nConnection: close\r\n");
        if (allow is not null)
            head.Append($"Allow: {allow}\r\n");
        head.Append("\r\n");
        return [.. Encoding.ASCII.GetBytes(head.ToString()), .. body];
    }

    /// <summary>An error: one line of text saying why.</summary>
    static byte[] Error(int code, string why, string? allow = null) =>
        Response(code, "text/plain; charset=utf-8", Encoding.UTF8.GetBytes(why + "\n"), allow);

    // The targets and the method each takes.
    static readonly Dictionary<string, string> Methods = new()
    {
        ["/"] = "GET", ["/events"] = "GET", ["/follow"] = "POST", ["/forget"] = "POST", ["/chat"] = "POST", ["/value"] = "POST",
    };

    /// <summary>The answer to the request so far, and whether it opens the event stream; null while
    /// more of it must come. Every byte is checked before it is used.</summary>
    (byte[] Response, bool Stream)? Respond(Connection connection, Command onCommand)
    {
        ReadOnlySpan<byte> data = connection.Buffer.AsSpan(0, connection.Length);
        int end = data[..Math.Min(data.Length, MaxHead)].IndexOf("\r\n\r\n"u8);
        if (end < 0)
            return data.Length >= MaxHead ? (Error(431, $"the request line and headers take more than {MaxHead} bytes"), false) : null;
        ReadOnlySpan<byte> head = data[..end];
        int lineEnd = head.IndexOf("\r\n"u8);
        ReadOnlySpan<byte> line = lineEnd < 0 ? head : head[..lineEnd];

        // The request line: METHOD SP TARGET SP VERSION, printable ASCII, three non-empty parts.
        string[] parts = Encoding.ASCII.GetString(line).Split(' ');
        if (line.ContainsAnyExceptInRange((byte)0x20, (byte)0x7e) || parts.Length != 3 || parts.Any(part => part == ""))
            return (Error(400, "not a request line: METHOD TARGET VERSION in printable ASCII"), false);
        var (method, target, version) = (parts[0], parts[1], parts[2]);
        if (version is not ("HTTP/1.1" or "HTTP/1.0"))
        {
            bool http = version.Length == 8 && version.StartsWith("HTTP/", StringComparison.Ordinal)
                && char.IsAsciiDigit(version[5]) && version[6] == '.' && char.IsAsciiDigit(version[7]);
            return http ? (Error(505, "only HTTP/1.1 and HTTP/1.0"), false) : (Error(400, $"not an HTTP version: {Query.Quote(Encoding.ASCII.GetBytes(version))}"), false);
        }

        // The headers: only Content-Length and Transfer-Encoding are read.
        string? length = null; // its digits, leading zeros dropped
        bool chunked = false;
        ReadOnlySpan<byte> rest = lineEnd < 0 ? [] : head[(lineEnd + 2)..];
        while (lineEnd >= 0)
        {
            lineEnd = rest.IndexOf("\r\n"u8);
            ReadOnlySpan<byte> header = lineEnd < 0 ? rest : rest[..lineEnd];
            rest = lineEnd < 0 ? [] : rest[(lineEnd + 2)..];
            int colon = header.IndexOf((byte)':');
            if (colon < 0)
                return (Error(400, "a header line without a colon"), false);
            ReadOnlySpan<byte> name = header[..colon], value = header[(colon + 1)..].Trim(" \t"u8);
            if (Ascii.EqualsIgnoreCase(name, "Transfer-Encoding"u8))
            {
                chunked = true;
            }
            else if (Ascii.EqualsIgnoreCase(name, "Content-Length"u8))
            {
                if (value.IsEmpty || value.ContainsAnyExceptInRange((byte)'0', (byte)'9'))
                    return (Error(400, "a Content-Length that is not decimal digits"), false);
                string digits = Encoding.ASCII.GetString(value).TrimStart('0');
                if (length is not null && length != digits)
                    return (Error(400, "two different Content-Lengths"), false);
                length = digits;
            }
        }
        if (chunked)
            return (Error(501, "no Transfer-Encoding: send a Content-Length"), false);
        int size = length is null ? 0 : length.Length > 4 ? MaxBody + 1 : length == "" ? 0 : int.Parse(length);
        if (size > MaxBody)
            return (Error(413, $"a body of more than {MaxBody} bytes"), false);

        if (!Methods.TryGetValue(target, out string? allowed))
            return (Error(404, $"nothing at {target}"), false);
        if (method != allowed)
            return (Error(405, $"{target} takes {allowed}", allowed), false);
        if (target == "/")
            return (Response(200, "text/html; charset=utf-8", Page), false);
        if (target == "/events")
            return (Replay(), true);
        if (length is null)
            return (Error(411, "a POST needs a Content-Length"), false);
        int start = end + 4;
        if (data.Length < start + size)
            return null; // the body is not all in yet
        var (code, reason) = onCommand(target, data.Slice(start, size).ToArray());
        return (code == 204 ? Response(204, null, []) : Error(code, reason), false);
    }

    // --- the event stream --------------------------------------------------------------------------

    static readonly byte[] Data = "data: "u8.ToArray(), End = "\n\n"u8.ToArray();

    static void AppendEvent(MemoryStream stream, byte[] line)
    {
        stream.Write(Data);
        stream.Write(line);
        stream.Write(End);
    }

    /// <summary>A new stream's head and its replay, in one message: the start-up lines, the last 1000
    /// others, then the latest line of each key.</summary>
    byte[] Replay()
    {
        using var stream = new MemoryStream();
        stream.Write(Response(200, "text/event-stream", [], stream: true));
        foreach (byte[] line in startup.Concat(ring).Concat(latest.Values))
            AppendEvent(stream, line);
        return stream.ToArray();
    }

    /// <summary>A line the desk wrote (or its `progress`): kept for the replay, under its
    /// <paramref name="key"/> if it has one, and sent to every event stream. A stream whose queue is
    /// full loses this line and every later one, and is closed once its queue has room for the close;
    /// a stream whose peer has gone is forgotten.</summary>
    public void Publish(byte[] line, string? key = null)
    {
        if (key is not null)
        {
            if (latest.Count < MaxKeys || latest.ContainsKey(key))
                latest[key] = line; // beyond 256 keys: sent live, not replayed
        }
        else if (!Serving && startup.Count < MaxLines)
        {
            startup.Add(line);
        }
        else
        {
            ring.Enqueue(line);
            if (ring.Count > MaxLines)
                ring.Dequeue();
        }
        byte[]? message = null;
        // Removing while enumerating a Dictionary is allowed (.NET Core 3.0 and later).
        foreach (var (id, connection) in connections)
        {
            if (connection.Stage != Stage.Stream)
                continue;
            if (message is null)
            {
                using var stream = new MemoryStream();
                AppendEvent(stream, line);
                message = stream.ToArray();
            }
            if (!Send(id, connection, message))
                connection.Stage = Stage.Closing; // (or gone, and forgotten)
        }
    }

    // --- deadlines -----------------------------------------------------------------------------------

    /// <summary>Each turn: a request not all in after 5000 ms gets 408 (if some of it came) or is closed;
    /// a connection answered 1000 ms ago is closed; a stream marked closing is closed once its queue
    /// has room for the close. (NetMQ then drops what that stream still had queued: a browser discards
    /// an event cut short, and its EventSource reconnects for a fresh replay.)</summary>
    public void Expire(long now)
    {
        foreach (var (key, connection) in connections)
        {
            if (connection.Stage == Stage.Closing)
                Close(key, connection);
            else if (now < connection.Deadline)
                continue;
            else if (connection.Stage == Stage.Request && connection.Length > 0)
                Answer(key, connection, Error(408, $"the request was not all in within {RequestMs} ms"), now);
            else if (connection.Stage != Stage.Stream)
                Close(key, connection);
        }
    }

    public void Dispose()
    {
        monitor?.Dispose();
        socket.Dispose();
    }
}
