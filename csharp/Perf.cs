// perf: throughput and latency, as libzmq's perf tools measure them (examples/perf/PROTOCOL.md).
//
// NetMQ's buffer pool stays at its default, which gives every received message a new array and
// leaves it to the garbage collector: its pooled BufferManager measured slower at 64 B (a C# sink
// fed by C: 2.7 M against 3.6 M msg/s) and no faster at 1 KiB. The same in C#, F# and VB. The
// runtime settings (ReadyToRun, tiered compilation off) are in ../Directory.Build.props.
using System.CommandLine;
using System.Diagnostics;
using System.Diagnostics.CodeAnalysis;
using System.Runtime.ExceptionServices;
using NetMQ;
using NetMQ.Sockets;

static class Perf
{
    const int ThroughputCount = 100000, LatencyCount = 10000;
    const string Inproc = "inproc://perf";
    const int CheckEvery = 1000; // messages between two looks at the deadline

    record Args(string Endpoint, int Size, int Count, int Timeout);

    public static Command Command() => new("perf", "throughput and latency, as libzmq's perf tools measure them")
    {
        Role("thr-sink", "PULL: bind, receive --count messages, time the first to the last", ThroughputCount, RunThrSink),
        Role("thr-source", "PUSH: connect, send --count messages", ThroughputCount, RunThrSource),
        Role("lat-echo", "REP: bind, send back each of --count messages", LatencyCount, RunLatEcho),
        Role("lat-ping", "REQ: connect, --count round trips, time them all", LatencyCount, RunLatPing),
        Role("inproc-thr", "PUSH and PULL on two threads of one process, over inproc://", ThroughputCount, RunInprocThr),
    };

    static Command Role(string name, string description, int defaultCount, Action<Args> run)
    {
        // inproc-thr has no endpoint: both halves meet on inproc://perf inside the process.
        Option<string>? endpoint = name == "inproc-thr" ? null : Flags.Endpoint("--endpoint", "tcp://127.0.0.1:5570");
        Option<int> size = Flags.AtLeast("--size", 0, 64);
        Option<int> count = Flags.AtLeast("--count", 1, defaultCount);
        Option<int> timeout = Flags.AtLeast("--timeout", 0, 60000);
        Command role = new(name, description) { size, count, timeout };
        if (endpoint is not null)
            role.Add(endpoint);
        role.SetAction(p => run(new(
            endpoint is null ? Inproc : p.GetValue(endpoint)!, p.GetValue(size), p.GetValue(count), p.GetValue(timeout))));
        return role;
    }

    // --- sockets and messages --------------------------------------------------------------------

    /// <summary>The wait of every single send and receive: the role's --timeout, or no limit when it
    /// is 0. It is given to NetMQ's TrySend/TryReceive, which wait inside the library (the RCVTIMEO
    /// and SNDTIMEO of libzmq): no poll per message, which would cost as much as the message itself.</summary>
    static TimeSpan Wait(int timeoutMs) => timeoutMs > 0 ? TimeSpan.FromMilliseconds(timeoutMs) : Timeout.InfiniteTimeSpan;

    static T Open<T>(T socket, Args args, bool bind, TimeSpan linger) where T : NetMQSocket
    {
        string endpoint = args.Endpoint;
        socket.Options.Linger = linger;
        // ZMQ_MAXMSGSIZE: NetMQ itself drops a bigger frame, and the sender's connection with it. At
        // least 256 bytes: the handshake's READY command is held to the same limit. (Over inproc
        // there is no decoder, and the limit changes nothing.)
        socket.Options.MaxMsgSize = Math.Max(args.Size, 256);
        // High-water marks stay at NetMQ's defaults (1000 messages each way), as in libzmq's tools.
        try
        {
            if (bind)
                socket.Bind(endpoint);
            else
                socket.Connect(endpoint);
        }
        catch (Exception error) // NetMQ throws various exception types for a bad endpoint
        {
            socket.Dispose();
            throw new Failure(bind ? "bind" : "connect", $"cannot {(bind ? "bind" : "connect")} {endpoint}: {error.Message}");
        }
        return socket;
    }

    /// <summary>The moment the peer hangs up, as the socket's monitor reports it.
    ///
    /// NetMQ closes its TCP connections with SO_LINGER 0, a reset, and on a reset the kernel throws
    /// away what the peer has not read yet, in its buffers and in ours: megabytes on a loopback.
    /// (libzmq closes gracefully, and the kernel delivers after the process is gone.) ZMQ_LINGER
    /// cannot help, since it waits only until NetMQ has handed the messages to the kernel. So a role
    /// whose last messages may still be on their way (the source's queue, the echo's last reply) closes
    /// only once the peer has hung up, which the peer does when it has them all.</summary>
    sealed class HangUp : IDisposable
    {
        readonly PairSocket events = new();

        /// <summary>Watch <paramref name="socket"/>, before it binds or connects.</summary>
        public HangUp(NetMQSocket socket)
        {
            const string endpoint = "inproc://perf-monitor";
            // The monitor sends one message per event on an inproc PAIR it binds; we hold the other end.
            socket.Monitor(endpoint, SocketEvents.Disconnected);
            events.Options.Linger = TimeSpan.Zero;
            events.Connect(endpoint);
        }

        /// <summary>Whether a peer hung up within <paramref name="wait"/>.</summary>
        public bool Wait(TimeSpan wait)
        {
            var msg = new Msg();
            msg.InitEmpty();
            bool disconnected = events.TryReceive(ref msg, wait);
            msg.Close();
            return disconnected;
        }

        public void Dispose() => events.Dispose();
    }

    /// <summary>One message into <paramref name="msg"/>, which is reused from call to call: NetMQ
    /// releases what it held before it takes the next message. A message must be a single frame of
    /// exactly <paramref name="size"/> bytes: a benchmark that measured something else must not
    /// report a figure.</summary>
    static void Receive(NetMQSocket socket, ref Msg msg, int size, TimeSpan wait)
    {
        if (!socket.TryReceive(ref msg, wait))
            throw new Failure("timeout", "no message within the timeout");
        if (msg.Size != size || msg.HasMore)
            WrongSize(msg.Size, msg.HasMore, size);
    }

    [DoesNotReturn]
    static void WrongSize(int got, bool more, int size) =>
        throw new Failure("wrong-size", $"a message of {got} bytes{(more ? " and more frames" : "")}, expected {size}");

    /// <summary>Send <paramref name="msg"/> as one frame. NetMQ takes its content and leaves it empty.</summary>
    static void Send(NetMQSocket socket, ref Msg msg, TimeSpan wait)
    {
        if (!socket.TrySend(ref msg, wait, more: false))
            throw new Failure("timeout", "no room to send within the timeout");
    }

    /// <summary>The deadline, looked at once every 1000 messages: cheap, and bounds the loop in time.</summary>
    static void CheckDeadline(Deadline deadline, int done)
    {
        if (done % CheckEvery == 0 && deadline.Expired)
            throw new Failure("timeout", $"not finished by the deadline ({done} messages)");
    }

    /// <summary>Seconds between two readings of the monotonic high-resolution clock; a duration below
    /// the clock's resolution (one message has no duration) counts as one tick, so the rates stay finite
    /// JSON numbers.</summary>
    static double Seconds(long started, long ended) => Math.Max(1, ended - started) / (double)Stopwatch.Frequency;

    /// <summary>The fields of a throughput `result`.</summary>
    static object Throughput(int size, int count, double seconds)
    {
        double rate = count / seconds;
        return new { size, count, seconds, msg_per_s = rate, mbit_per_s = rate * size * 8 / 1e6 };
    }

    // --- the two halves of a throughput measurement ----------------------------------------------

    /// <summary>Receive <paramref name="count"/> messages; time from the arrival of the first to the
    /// arrival of the last (libzmq's local_thr), in seconds.</summary>
    static double Sink(PullSocket pull, int size, int count, TimeSpan wait, Deadline deadline)
    {
        var msg = new Msg();
        msg.InitEmpty(); // one Msg for every message: nothing allocated here per message
        Receive(pull, ref msg, size, wait);
        long started = Stopwatch.GetTimestamp();
        for (int done = 1; done < count; done++)
        {
            CheckDeadline(deadline, done);
            Receive(pull, ref msg, size, wait);
        }
        long ended = Stopwatch.GetTimestamp();
        msg.Close();
        return Seconds(started, ended);
    }

    static void Source(PushSocket push, int size, int count, TimeSpan wait, Deadline deadline)
    {
        byte[] zeros = new byte[size]; // all bytes zero, as in libzmq's tools; never written to
        var msg = new Msg();
        for (int done = 0; done < count; done++)
        {
            CheckDeadline(deadline, done);
            // A GC message only points at the array: no copy, no allocation. Every queued message
            // shares the one array, which is safe because nobody ever writes to it.
            msg.InitGC(zeros, size);
            // PUSH waits here while the sink's queue is full (the high-water mark, 1000 messages at
            // each end): that flow control is part of what is measured.
            Send(push, ref msg, wait);
        }
    }

    // --- roles -----------------------------------------------------------------------------------

    static void RunThrSink(Args args)
    {
        var deadline = new Deadline(args.Timeout);
        // PULL fair-queues from every connected PUSH; here there is one. Linger 0: it sends nothing.
        using var pull = Open(new PullSocket(), args, bind: true, TimeSpan.Zero);
        Contract.Emit("ready", new { endpoint = pull.Options.LastEndpoint });
        double seconds = Sink(pull, args.Size, args.Count, Wait(args.Timeout), deadline);
        Contract.Emit("result", Throughput(args.Size, args.Count, seconds));
        Contract.Emit("done");
    }

    static void RunThrSource(Args args)
    {
        var deadline = new Deadline(args.Timeout);
        using (var push = new PushSocket())
        using (var hangUp = new HangUp(push))
        {
            // Linger: the last sends only queue their messages, which must not be dropped by closing.
            Open(push, args, bind: false, Wait(args.Timeout));
            Contract.Emit("ready");
            Source(push, args.Size, args.Count, Wait(args.Timeout), deadline);
            Contract.Emit("done");
            // What is left of --timeout (no limit without one) bounds both waits: for the sink to
            // hang up once it has every message, and for NetMQ to hand over what is still queued.
            hangUp.Wait(deadline.Remaining);
            push.Options.Linger = deadline.Remaining;
        }
        // NetMQ lingers in its own threads. Waiting for them, once the socket is closed, is what
        // keeps the queue: the usual exit (Program.cs) cleans up without waiting and would drop it.
        NetMQConfig.Cleanup(block: true);
    }

    static void RunLatEcho(Args args)
    {
        var deadline = new Deadline(args.Timeout);
        TimeSpan wait = Wait(args.Timeout);
        // REP: strictly receive, then reply; the reply goes back to whoever asked.
        using var rep = new ResponseSocket();
        using var hangUp = new HangUp(rep);
        // Linger 0: once the ping hangs up (below), it has every reply, and nothing else is owed.
        Open(rep, args, bind: true, TimeSpan.Zero);
        Contract.Emit("ready", new { endpoint = rep.Options.LastEndpoint });
        var msg = new Msg();
        msg.InitEmpty();
        for (int done = 0; done < args.Count; done++)
        {
            CheckDeadline(deadline, done);
            Receive(rep, ref msg, args.Size, wait);
            Send(rep, ref msg, wait); // the very message back, no copy: the send takes it, and empties msg
        }
        msg.Close();
        Contract.Emit("done");
        hangUp.Wait(deadline.Remaining); // the last reply may still be on its way: see HangUp
    }

    static void RunLatPing(Args args)
    {
        var deadline = new Deadline(args.Timeout);
        TimeSpan wait = Wait(args.Timeout);
        // REQ: strictly one request, then its reply (lockstep), so each round trip is timed whole.
        using var req = Open(new RequestSocket(), args, bind: false, TimeSpan.Zero);
        Contract.Emit("ready");
        byte[] zeros = new byte[args.Size];
        var request = new Msg();
        var reply = new Msg();
        reply.InitEmpty();
        // From the first send to the last reply (libzmq's remote_lat).
        long started = Stopwatch.GetTimestamp();
        for (int done = 0; done < args.Count; done++)
        {
            CheckDeadline(deadline, done);
            request.InitGC(zeros, args.Size);
            Send(req, ref request, wait);
            Receive(req, ref reply, args.Size, wait);
        }
        long ended = Stopwatch.GetTimestamp();
        reply.Close();
        double seconds = Seconds(started, ended);
        Contract.Emit("result", new
        {
            size = args.Size, count = args.Count, seconds, latency_us = seconds * 1e6 / (2.0 * args.Count),
        });
        Contract.Emit("done");
    }

    /// <summary>Both halves in one process: inproc:// is a queue between two threads that NetMQ's
    /// context carries, with no network stack and no I/O thread in between.</summary>
    static void RunInprocThr(Args args)
    {
        var deadline = new Deadline(args.Timeout);
        TimeSpan wait = Wait(args.Timeout);
        // inproc: the PULL binds before the PUSH connects to it.
        using var pull = Open(new PullSocket(), args, bind: true, TimeSpan.Zero);
        using var push = Open(new PushSocket(), args, bind: false, Wait(args.Timeout)); // linger as a source's
        Contract.Emit("ready");
        ExceptionDispatchInfo? failure = null;
        // A NetMQ socket is not thread-safe: from here on, the push socket is the sender thread's
        // alone (its start and our Join are the memory barriers), the pull socket this thread's.
        var sender = new Thread(() =>
        {
            try
            {
                Source(push, args.Size, args.Count, wait, deadline);
            }
            catch (Exception error)
            {
                failure = ExceptionDispatchInfo.Capture(error);
            }
        }) { Name = "inproc-thr source" };
        sender.Start();
        double seconds;
        try
        {
            seconds = Sink(pull, args.Size, args.Count, wait, deadline);
        }
        finally
        {
            sender.Join(); // bounded: the sender gives up at its own send timeout or deadline
        }
        failure?.Throw();
        Contract.Emit("result", Throughput(args.Size, args.Count, seconds));
        Contract.Emit("done");
    }
}
