// The launch contract (examples/README.md) in C#: JSON Lines events on stdout, logs on stderr, the
// --timeout deadline, fatal failures, the stop signal, the flag types every example uses and the
// security flags; and what several examples share: splitmix64, receiving what a poll reported and
// sending on a PUSH socket when it has room.
using System.CommandLine;
using System.Diagnostics.CodeAnalysis;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.Unicode;
using NetMQ;

static class Events
{
    /// <summary>Strict UTF-8: no BOM, and invalid bytes (overlongs, surrogates...) throw instead of becoming U+FFFD.</summary>
    public static readonly UTF8Encoding Strict = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    static readonly Stream Stdout = Console.OpenStandardOutput();
    // Non-ASCII text is written as UTF-8, not \u-escaped, so people can read the transcripts.
    static readonly JsonSerializerOptions Json = new() { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    // One line at a time: the role's thread(s) and the socket monitors' (SocketMonitor.cs) share stdout.
    static readonly Lock Output = new();
    static bool done; // `done` was written: no socket-event after it

    /// <summary>Write one event as one JSON line and flush it at once, so the orchestrator sees it live.
    /// A monitor's `socket-event` that comes after `done` is dropped: the role's story has ended.</summary>
    public static void Emit(string name, object? fields = null)
    {
        byte[] line = Line(name, fields);
        lock (Output)
        {
            if (done && name == "socket-event")
                return;
            done |= name == "done";
            Put(line);
        }
    }

    /// <summary>One event as a JSON object in UTF-8, without the newline: <c>event</c> first, then the
    /// desk agent's name when there is one (Desk.cs), then the fields.</summary>
    public static byte[] Line(string name, object? fields, string? agent = null)
    {
        JsonObject line = JsonSerializer.SerializeToNode(fields ?? new { }, Json)!.AsObject();
        line.Insert(0, "event", name);
        if (agent is not null)
            line.Insert(1, "agent", agent);
        return Encoding.UTF8.GetBytes(line.ToJsonString(Json));
    }

    /// <summary>Write a <see cref="Line"/> and its newline in one write, and flush, under the lock.</summary>
    public static void Write(byte[] line)
    {
        lock (Output)
            Put(line);
    }

    static void Put(byte[] line)
    {
        Stdout.Write([.. line, (byte)'\n']);
        Stdout.Flush();
    }

    public static void Log(string message) => Console.Error.WriteLine(message);
}

/// <summary>Where shared code reports an event: <see cref="Events.Emit"/> in a role, which owns stdout;
/// the agent's pipe in the desk (Desk.cs), whose main thread alone writes to stdout.</summary>
delegate void Report(string name, object? fields = null);

/// <summary>A fatal error: reported as an `error` event, then the role exits 1.</summary>
sealed class Failure(string code, string reason) : Exception(reason)
{
    public string Code => code;
    public string Reason => Message;
}

/// <summary>A bad combination of flags that the parser alone cannot see: exit 2, like a parser error.</summary>
sealed class Usage(string message) : Exception(message);

/// <summary>The role's --timeout: the time left, or no limit when it is 0.</summary>
sealed class Deadline(int timeoutMs)
{
    readonly long? end = timeoutMs > 0 ? Environment.TickCount64 + timeoutMs : null;

    /// <summary>The time left; NetMQ's infinite timeout (-1 ms) when there is no limit.</summary>
    public TimeSpan Remaining => end is long e
        ? TimeSpan.FromMilliseconds(Math.Max(0, e - Environment.TickCount64))
        : Timeout.InfiniteTimeSpan;

    public bool Expired => end is long e && Environment.TickCount64 >= e;

    /// <summary>A poll timeout of at most <paramref name="wait"/> that never runs past the deadline.</summary>
    public TimeSpan Cap(TimeSpan wait)
    {
        if (end is null) return wait;
        TimeSpan left = Remaining;
        return wait < left ? wait : left;
    }
}

/// <summary>SIGTERM and SIGINT only raise a flag; a server loop looks at it after every poll.</summary>
sealed class StopSignal : IDisposable
{
    volatile bool raised;
    readonly PosixSignalRegistration term, interrupt;

    public StopSignal()
    {
        term = PosixSignalRegistration.Create(PosixSignal.SIGTERM, RaiseFlag);
        interrupt = PosixSignalRegistration.Create(PosixSignal.SIGINT, RaiseFlag);
    }

    public bool Raised => raised;

    void RaiseFlag(PosixSignalContext context)
    {
        context.Cancel = true; // do not let the runtime end the process: the loop stops by itself
        raised = true;
    }

    public void Dispose()
    {
        term.Dispose();
        interrupt.Dispose();
    }
}

/// <summary>The flag types every example uses (System.CommandLine options with a value each).</summary>
static class Flags
{
    public const int MaxName = 32; // bytes of UTF-8: chat handles, subscriber names

    /// <summary>Whether these bytes are a name: 1 to <see cref="MaxName"/> bytes of valid UTF-8 (a chat
    /// handle, a subscriber's @name).</summary>
    public static bool IsName(ReadOnlySpan<byte> bytes) =>
        bytes.Length is >= 1 and <= MaxName && Utf8.IsValid(bytes);

    public static Option<string> Endpoint(string flag, string fallback) => new(flag) { DefaultValueFactory = _ => fallback };

    /// <summary>--monitor on|off (the launch contract's "Socket monitors"): whether to attach a
    /// <see cref="SocketMonitor"/> to every socket an endpoint flag gives. A string option: the parser
    /// would take only true or false after an Option&lt;bool&gt;.</summary>
    public static Option<string> Monitor()
    {
        Option<string> monitor = new("--monitor") { DefaultValueFactory = _ => "off" };
        monitor.AcceptOnlyFromAmong("on", "off");
        return monitor;
    }

    /// <summary>An integer option (milliseconds or a count) no smaller than <paramref name="minimum"/>.</summary>
    public static Option<int> AtLeast(string flag, int minimum, int fallback) => new(flag)
    {
        DefaultValueFactory = _ => fallback,
        CustomParser = result =>
        {
            if (int.TryParse(result.Tokens.Single().Value, out int number) && number >= minimum) return number;
            result.AddError($"{flag} takes an integer of at least {minimum}");
            return fallback;
        },
    };

    public delegate bool Parser<T>(string text, [MaybeNullWhen(false)] out T value);

    /// <summary>An option whose value <paramref name="parse"/> checks; required unless it has a
    /// <paramref name="fallback"/>.</summary>
    public static Option<T> Typed<T>(string flag, string rule, Parser<T> parse, Func<T>? fallback = null) => new(flag)
    {
        Required = fallback is null,
        DefaultValueFactory = fallback is null ? null : _ => fallback(),
        CustomParser = result =>
        {
            if (parse(result.Tokens.Single().Value, out T? value)) return value;
            result.AddError($"{flag}: {rule}");
            return default;
        },
    };

    /// <summary>An unsigned 64-bit integer (a seed, a sequence number, an order id); required unless it
    /// has a <paramref name="fallback"/>.</summary>
    public static Option<ulong> UInt64(string flag, ulong? fallback = null) =>
        Typed<ulong>(flag, "takes an unsigned 64-bit integer", TryParseUInt64, fallback is ulong value ? () => value : null);

    static bool TryParseUInt64(string text, out ulong number) =>
        ulong.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out number);

    /// <summary>A required name of 1 to <see cref="MaxName"/> bytes of UTF-8.</summary>
    public static Option<string> Name(string flag) => new(flag)
    {
        Required = true,
        CustomParser = result =>
        {
            string name = result.Tokens.Single().Value;
            if (Encoding.UTF8.GetByteCount(name) is >= 1 and <= MaxName) return name;
            result.AddError($"{flag} takes 1 to {MaxName} bytes of UTF-8");
            return name;
        },
    };
}

/// <summary>The mechanism a role runs under and its credentials, from the security flags of the launch
/// contract (examples/README.md, "Security"). Keys are Z85 text, already checked.</summary>
sealed record Security(string Mechanism, string? CurveSecret, string? CurvePublic, string? CurveServer);

/// <summary>The security flags of a server or a client role: <c>--security</c>, the CURVE keys and the
/// PLAIN username and password. The parser checks each value; <see cref="Read"/> checks that the
/// chosen mechanism has what it needs, and that NetMQ can do it at all.</summary>
sealed class SecurityFlags
{
    // The Z85 alphabet (RFC 32): 85 printable characters, never ',' nor a space or a quote.
    const string Z85 = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";

    readonly bool server;
    readonly Option<string> mechanism = new("--security") { DefaultValueFactory = _ => "null" };
    readonly Option<string> curveSecret = CurveKey("--curve-secret");
    readonly Option<string> curvePublic = CurveKey("--curve-public"); // client
    readonly Option<string> curveServer = CurveKey("--curve-server"); // client
    readonly Option<string[]> curveClients = CurveKeys("--curve-clients"); // server
    // NetMQ has no PLAIN, but the command line is the same in every language.
    readonly Option<string> plainUser = Credential("--plain-user");
    readonly Option<string> plainPassword = Credential("--plain-password");

    public SecurityFlags(Command command, bool server)
    {
        this.server = server;
        mechanism.AcceptOnlyFromAmong("null", "plain", "curve");
        command.Options.Add(mechanism);
        command.Options.Add(curveSecret);
        if (server)
        {
            command.Options.Add(curveClients);
        }
        else
        {
            command.Options.Add(curvePublic);
            command.Options.Add(curveServer);
        }
        command.Options.Add(plainUser);
        command.Options.Add(plainPassword);
    }

    /// <summary>A CURVE key is 40 characters of Z85 that encode 32 bytes: each group of 5 characters
    /// is a number in base 85 that fits in 4 bytes.</summary>
    static bool IsCurveKey(string text) =>
        text.Length == 40 && text.All(Z85.Contains)
        && text.Chunk(5).All(group => group.Aggregate(0UL, (value, c) => value * 85 + (ulong)Z85.IndexOf(c)) <= uint.MaxValue);

    static Option<string> CurveKey(string flag) => new(flag)
    {
        CustomParser = result =>
        {
            string key = result.Tokens.Single().Value;
            if (!IsCurveKey(key)) result.AddError($"{flag} takes a CURVE key: 40 characters of Z85 that encode 32 bytes");
            return key;
        },
    };

    /// <summary>A PLAIN username or password: 1 to 255 bytes of UTF-8 (ZMTP frames each with one
    /// length byte).</summary>
    static Option<string> Credential(string flag) => new(flag)
    {
        CustomParser = result =>
        {
            string text = result.Tokens.Single().Value;
            if (Encoding.UTF8.GetByteCount(text) is < 1 or > 255) result.AddError($"{flag} takes 1 to 255 bytes of UTF-8");
            return text;
        },
    };

    /// <summary>Comma-separated CURVE keys (Z85 never uses ',').</summary>
    static Option<string[]> CurveKeys(string flag) => new(flag)
    {
        CustomParser = result =>
        {
            string[] keys = result.Tokens.Single().Value.Split(',');
            if (!keys.All(IsCurveKey)) result.AddError($"{flag} takes CURVE keys separated by ',': 40 characters of Z85 each");
            return keys;
        },
    };

    /// <summary>The chosen mechanism and its keys. What is missing for it, or what NetMQ cannot do, is a
    /// <see cref="Usage"/> error (exit 2): never a silent downgrade to less security.</summary>
    public Security Read(ParseResult parsed)
    {
        string chosen = parsed.GetValue(mechanism)!;
        if (chosen == "plain")
            throw new Usage("--security plain: NetMQ 4.0.4.5 does not implement the PLAIN mechanism");
        if (server && chosen == "curve" && parsed.GetResult(curveClients) is not null)
            throw new Usage("--curve-clients: NetMQ 4.0.4.5 has no ZAP handler, so it cannot restrict client keys");
        string? Required(Option<string> option) => chosen != "curve" ? null
            : parsed.GetValue(option) ?? throw new Usage($"--security curve needs {option.Name}");
        return server
            ? new(chosen, Required(curveSecret), null, null)
            : new(chosen, Required(curveSecret), Required(curvePublic), Required(curveServer));
    }
}

/// <summary>splitmix64: the counter-based generator behind the ticker's prices and the valuation's
/// orders, so that every language recomputes the same numbers (examples/ticker/PROTOCOL.md).</summary>
static class Prng
{
    // All the arithmetic is on ulong, modulo 2^64: C# wraps unless a checked context says otherwise.
    public const ulong Golden = 0x9E3779B97F4A7C15UL;

    public static ulong SplitMix64(ulong x)
    {
        ulong z = x + Golden;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }
}

static class Sockets
{
    // NetMQ throws various exception types for a bad endpoint or a port in use: each is the
    // contract's `bind` or `connect` failure.
    public static void Bind(NetMQSocket socket, string endpoint)
    {
        try { socket.Bind(endpoint); }
        catch (Exception error) { throw new Failure("bind", $"cannot bind {endpoint}: {error.Message}"); }
    }

    public static void Connect(NetMQSocket socket, string endpoint)
    {
        try { socket.Connect(endpoint); }
        catch (Exception error) { throw new Failure("connect", $"cannot connect to {endpoint}: {error.Message}"); }
    }

    /// <summary>Read what a poller's <c>ReceiveReady</c> reported, without waiting: the message, or null
    /// if there was nothing after all.
    ///
    /// Ready is a hint, not a promise: REP silently drops a request it cannot route (a DEALER's
    /// without the empty delimiter frame), and REQ a reply, <em>inside</em> the receive; a blocking
    /// <c>ReceiveMultipartBytes()</c> would then wait for the next message, deaf to the heartbeat,
    /// the deadline and the stop flag. So the wait is zero. (A <c>TryReceive...(timeout)</c> that is
    /// itself the wait, the poll, is safe as it is.) The other frames of a message arrive together
    /// with the first, so reading them cannot block.</summary>
    public static List<byte[]>? ReceiveIfReady(this NetMQSocket socket)
    {
        var frames = new List<byte[]>();
        return socket.TryReceiveMultipartBytes(TimeSpan.Zero, ref frames) ? frames : null;
    }

    /// <summary>Send on a PUSH socket, which cannot send while no peer is connected or every peer's
    /// queue is full (the high-water mark): wait for room, a second at a time, never past the deadline.
    /// TrySend with a timeout is the wait; it blocks in the library, it does not spin.</summary>
    public static void SendWhenRoom(this NetMQSocket socket, byte[][] frames, Deadline deadline, string what)
    {
        while (!socket.TrySendMultipartBytes(deadline.Cap(TimeSpan.FromSeconds(1)), frames))
        {
            if (deadline.Expired)
                throw new Failure("timeout", $"no room to send {what}");
        }
    }
}
