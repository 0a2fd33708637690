// The launch contract (examples/README.md) in C#: JSON Lines events on stdout, logs on stderr, the
// --timeout deadline, fatal failures, the stop signal, and the flag types every example uses.
using System.CommandLine;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;
using System.Text.Json.Nodes;

static class Events
{
    static readonly Stream Stdout = Console.OpenStandardOutput();
    // Non-ASCII text is written as UTF-8, not \u-escaped, so people can read the transcripts.
    static readonly JsonSerializerOptions Json = new() { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    /// <summary>Write one event as one JSON line and flush it at once, so the orchestrator sees it live.</summary>
    public static void Emit(string name, object? fields = null)
    {
        JsonObject line = JsonSerializer.SerializeToNode(fields ?? new { }, Json)!.AsObject();
        line.Insert(0, "event", name);
        Stdout.Write(Encoding.UTF8.GetBytes(line.ToJsonString(Json) + "\n"));
        Stdout.Flush();
    }

    public static void Log(string message) => Console.Error.WriteLine(message);
}

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

    public static Option<string> Endpoint(string flag, string fallback) => new(flag) { DefaultValueFactory = _ => fallback };

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
