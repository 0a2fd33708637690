// The launch contract's reporting half: JSON Lines events on stdout, logs on stderr.
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
