// The launch contract (examples/README.md) in C#: JSON Lines events on stdout, logs on stderr, the
// --timeout deadline, fatal failures, the stop signal, the flag types every example uses, and the
// socket helpers of "One loop shape": bind and connect, the poll, receiving what a poll reported and
// sending on a PUSH socket when it has room. Security (mechanisms, keys) is in Security.cs, the
// socket monitors in SocketMonitor.cs.
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

static class Contract
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

/// <summary>Where shared code reports an event: <see cref="Contract.Emit"/> in a role, which owns stdout;
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

/// <summary>SIGTERM and SIGINT only raise a flag; a role's loop looks at it at every turn (step 1 of
/// "One loop shape"), or waits for it (the ticker's proxy). .NET runs the handler on a thread of its
/// own, and its runtime retries a poll or a receive that a signal interrupted: no EINTR reaches the
/// program. The poll's timeout is what bounds the time until the loop sees the flag.</summary>
sealed class StopSignal : IDisposable
{
    readonly ManualResetEventSlim raised = new();
    readonly PosixSignalRegistration term, interrupt;

    public StopSignal()
    {
        term = PosixSignalRegistration.Create(PosixSignal.SIGTERM, RaiseFlag);
        interrupt = PosixSignalRegistration.Create(PosixSignal.SIGINT, RaiseFlag);
    }

    public bool Raised => raised.IsSet;

    /// <summary>True once raised; false if <paramref name="timeout"/> (infinite: no limit) passed first.</summary>
    public bool Wait(TimeSpan timeout) => raised.Wait(timeout);

    void RaiseFlag(PosixSignalContext context)
    {
        context.Cancel = true; // do not let the runtime end the process: the loop stops by itself
        raised.Set();
    }

    public void Dispose()
    {
        term.Dispose();
        interrupt.Dispose();
        raised.Dispose();
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

/// <summary>Sockets as every role uses them: bind and connect, poll, receive what the poll reported, and
/// send on a PUSH socket when it has room (examples/README.md, "One loop shape" and "Hostile peers").</summary>
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

    /// <summary>zmq_poll: wait until some of the <paramref name="items"/> are ready (a message to read, or
    /// room to send one for an item that asks for PollOut), or for <paramref name="timeout"/> (infinite:
    /// no limit); the sockets that are. NetMQSelector is the one-shot poll under <c>socket.Poll</c> and
    /// NetMQPoller; unlike NetMQPoller, which calls a handler per socket, it leaves the loop to the
    /// role, so the program keeps the same shape in every language. One wait for all: no busy loop.</summary>
    public static HashSet<NetMQSocket> Poll(NetMQSelector.Item[] items, TimeSpan timeout)
    {
        new NetMQSelector().Select(items, items.Length, (long)Math.Ceiling(timeout.TotalMilliseconds));
        return [.. items.Where(item => item.ResultEvent != PollEvents.None).Select(item => item.Socket!)];
    }

    /// <summary>The poll items that wait for a message on each of <paramref name="sockets"/> (nulls skipped:
    /// a socket a role does not open).</summary>
    public static NetMQSelector.Item[] PollIn(IEnumerable<NetMQSocket?> sockets) =>
        [.. sockets.OfType<NetMQSocket>().Select(socket => new NetMQSelector.Item(socket, PollEvents.PollIn))];

    /// <summary>The poll of one socket: whether a message is ready on it within <paramref name="timeout"/>
    /// (infinite: no limit).</summary>
    public static bool PollIn(this NetMQSocket socket, TimeSpan timeout) =>
        socket.Poll(PollEvents.PollIn, timeout).HasFlag(PollEvents.PollIn);

    /// <summary>Read what a poll reported, without waiting: the message, or null if there was nothing
    /// after all.
    ///
    /// Ready is a hint, not a promise: REP silently drops a request it cannot route (a DEALER's
    /// without the empty delimiter frame), and REQ a reply, <em>inside</em> the receive; a blocking
    /// <c>ReceiveMultipartBytes()</c> would then wait for the next message, deaf to the heartbeat,
    /// the deadline and the stop flag. So the wait is zero. The other frames of a message arrive
    /// together with the first, so reading them cannot block.</summary>
    public static List<byte[]>? ReceiveIfReady(this NetMQSocket socket)
    {
        var frames = new List<byte[]>();
        return socket.TryReceiveMultipartBytes(TimeSpan.Zero, ref frames) ? frames : null;
    }

    /// <summary>One frame if one is there now, whatever its "more" flag, without waiting (an XPUB's
    /// subscriptions are read so); null if there was nothing after all.</summary>
    public static byte[]? ReceiveFrameIfReady(this NetMQSocket socket) =>
        socket.TryReceiveFrameBytes(TimeSpan.Zero, out byte[]? frame) ? frame : null;

    /// <summary>Send on a PUSH socket, which cannot send while no peer is connected or every peer's
    /// queue is full (the high-water mark): wait for room with a poll (PollOut), a second at a time,
    /// never past the deadline. The send itself does not wait: should the room the poll saw be gone
    /// (the peer left), it is back to the poll. Once the first frame is queued, so is the message.</summary>
    public static void SendWhenRoom(this NetMQSocket socket, byte[][] frames, Deadline deadline, string what)
    {
        while (true)
        {
            if (socket.Poll(PollEvents.PollOut, deadline.Cap(TimeSpan.FromSeconds(1))).HasFlag(PollEvents.PollOut)
                && socket.TrySendMultipartBytes(TimeSpan.Zero, frames))
                return;
            if (deadline.Expired)
                throw new Failure("timeout", $"no room to send {what}");
        }
    }
}
