/// desk: a trading desk, one process whose threads talk over inproc pipes (examples/desk/PROTOCOL.md).
///
/// Four agent threads each own the sockets of one earlier example and speak its protocol: chat,
/// ticker, valuation (the source and the sink in one) and query. The main thread runs the scenario
/// and is the only one that writes to stdout, but for the socket monitors' threads (`--monitor on`). The threads share nothing but NetMQ's one context:
/// they talk through PAIR sockets over inproc://, the pipes. "Don't share state, share messages."
module Btb.Desk

open System
open System.Buffers.Binary
open System.Collections.Generic
open System.Text
open System.Text.RegularExpressions
open System.Threading
open Argu
open NetMQ
open NetMQ.Sockets
open Btb.Contract

// --- command line ----------------------------------------------------------------------------

type TraderArgs =
    | [<Mandatory>] Name of name: string
    | Chat_Requests of endpoint: string
    | Chat_Broadcasts of endpoint: string
    | Chat_Clients of handles: int
    | Posts of count: int
    | Ticks of endpoint: string
    | Follow of list: string
    | Forget of symbol: string
    | Forget_After of ticks: int
    | Tick_Count of ticks: int
    | Seed of seed: uint64
    | Orders of endpoint: string
    | Results of endpoint: string
    | Control of endpoint: string
    | Trade of orders: int
    | Workers of count: int
    | Quiet of ms: int
    | Heartbeat of ms: int
    | Snapshot of endpoint: string
    | Updates of endpoint: string
    | Collector of endpoint: string
    | Subtrees of list: string
    | Http of endpoint: string
    | Timeout of ms: int
    | Monitor of on_off: string

    interface IArgParserTemplate with
        member this.Usage =
            match this with
            | Name _ -> "1 to 32 of A-Z a-z 0-9 _ -: chat handle, @name, facade name (required)"
            | Chat_Requests _ -> "the chat server's REP (default tcp://127.0.0.1:5555)"
            | Chat_Broadcasts _ -> "the chat server's PUB (default tcp://127.0.0.1:5556)"
            | Chat_Clients _ -> "roster size to wait for before posting (default 1)"
            | Posts _ -> "chat posts, one per tick (default 5)"
            | Ticks _ -> "the ticker publisher or proxy (default tcp://127.0.0.1:5557)"
            | Follow _ -> "comma-separated symbols to follow (default AAPL,GOOG,MSFT)"
            | Forget _ -> "one of --follow, forgotten during the run; empty: none (default empty)"
            | Forget_After _ -> "ticks of --forget before it is forgotten (default 10)"
            | Tick_Count _ -> "ticks of every symbol still followed (default 20)"
            | Seed _ -> "the publisher's price seed and the trade's order seed (default 1)"
            | Orders _ -> "PUSH endpoint to bind (default tcp://127.0.0.1:5562)"
            | Results _ -> "PULL endpoint to bind (default tcp://127.0.0.1:5560)"
            | Control _ -> "PUB endpoint to bind (default tcp://127.0.0.1:5561)"
            | Trade _ -> "orders in the trade, 0 for none, at most 1000000 (default 100)"
            | Workers _ -> "ready workers to wait for (default 1)"
            | Quiet _ -> "silence in ms before missing orders are sent again (default 1000)"
            | Heartbeat _ -> "interval between state messages in ms (default 100)"
            | Snapshot _ -> "the query engine's ROUTER (default tcp://127.0.0.1:5566)"
            | Updates _ -> "the query engine's XPUB (default tcp://127.0.0.1:5567)"
            | Collector _ -> "the query engine's collector SUB (default tcp://127.0.0.1:5568)"
            | Subtrees _ -> "the query agent's subtrees, holding /desks/NAME/ (default /prices/,/desks/)"
            | Http _ -> "serve the desk's page on this tcp:// endpoint; empty: no page (default empty)"
            | Timeout _ -> "longest run in ms, 0 for no limit (default 60000)"
            | Monitor _ -> "on: report every socket's connection events (default off)"

[<RequireSubcommand>]
type DeskArgs =
    | [<CliPrefix(CliPrefix.None)>] Trader of ParseResults<TraderArgs>

    interface IArgParserTemplate with
        member this.Usage =
            match this with
            | Trader _ -> "chat, follow prices, value a trade and record it, on four agent threads"

/// The flags, checked. Each agent gets this record when its thread starts: immutable, so a copy in
/// all but name; everything after that comes as pipe messages.
type TraderSettings =
    { Name: string; ChatRequests: string; ChatBroadcasts: string; ChatClients: int; Posts: int
      Ticks: string; Follow: string list; Forget: string; ForgetAfter: int; TickCount: int; Seed: uint64
      Orders: string; Results: string; Control: string; Trade: int; Workers: int; Quiet: int
      Heartbeat: int; Snapshot: string; Updates: string; Collector: string; Subtrees: string list
      Http: string; Timeout: int; Monitor: bool }

let MaxTrade = 1000000
let MaxWaiting = 100 // commands an agent queues (texts to post, writes) before it says "busy"

let deskName (value: string) =
    if not (Regex.IsMatch(value, @"\A[A-Za-z0-9_-]{1,32}\z")) then
        failwith "a desk name is 1 to 32 of A-Z a-z 0-9 _ -"
    value

let tradeSize (orders: int) =
    if orders < 0 || orders > MaxTrade then failwithf "a trade is 0 to %d orders" MaxTrade
    orders

/// `--http`: empty (no page), or a tcp:// endpoint to bind, its port a number or * (any free one).
let httpEndpoint (value: string) =
    if value <> "" && not (Regex.IsMatch(value, @"\Atcp://.+:(\*|[0-9]+)\z")) then
        failwith "the page's endpoint is tcp://HOST:PORT (PORT may be *), or empty for no page"
    value

let traderSettings (args: ParseResults<TraderArgs>) : TraderSettings =
    let settings =
        { Name = args.PostProcessResult(Name, deskName)
          ChatRequests = args.GetResult(Chat_Requests, "tcp://127.0.0.1:5555")
          ChatBroadcasts = args.GetResult(Chat_Broadcasts, "tcp://127.0.0.1:5556")
          ChatClients = args.TryPostProcessResult(Chat_Clients, atLeast 1) |> Option.defaultValue 1
          Posts = args.TryPostProcessResult(Posts, atLeast 0) |> Option.defaultValue 5
          Ticks = args.GetResult(Ticks, "tcp://127.0.0.1:5557")
          Follow =
            args.TryPostProcessResult(Follow, Ticker.symbols)
            |> Option.defaultWith (fun () -> Ticker.symbols "AAPL,GOOG,MSFT")
            |> List.distinct
          Forget = args.TryPostProcessResult(Forget, fun s -> if s = "" then s else Ticker.symbol s)
                   |> Option.defaultValue ""
          ForgetAfter = args.TryPostProcessResult(Forget_After, atLeast 1) |> Option.defaultValue 10
          TickCount = args.TryPostProcessResult(Tick_Count, atLeast 1) |> Option.defaultValue 20
          Seed = args.GetResult(Seed, 1UL) // Argu reads an unsigned 64-bit: 0 to 2^64-1
          Orders = args.GetResult(Orders, "tcp://127.0.0.1:5562")
          Results = args.GetResult(Results, "tcp://127.0.0.1:5560")
          Control = args.GetResult(Control, "tcp://127.0.0.1:5561")
          Trade = args.TryPostProcessResult(Trade, tradeSize) |> Option.defaultValue 100
          Workers = args.TryPostProcessResult(Workers, atLeast 1) |> Option.defaultValue 1
          Quiet = args.TryPostProcessResult(Quiet, atLeast 1) |> Option.defaultValue 1000
          Heartbeat = args.TryPostProcessResult(Heartbeat, atLeast 1) |> Option.defaultValue 100
          Snapshot = args.GetResult(Snapshot, "tcp://127.0.0.1:5566")
          Updates = args.GetResult(Updates, "tcp://127.0.0.1:5567")
          Collector = args.GetResult(Collector, "tcp://127.0.0.1:5568")
          Subtrees =
            args.TryPostProcessResult(Subtrees, Query.subtreeList)
            |> Option.defaultWith (fun () -> Query.subtreeList "/prices/,/desks/")
          Http = args.TryPostProcessResult(Http, httpEndpoint) |> Option.defaultValue ""
          Timeout = args.TryPostProcessResult(TraderArgs.Timeout, atLeast 0) |> Option.defaultValue 60000
          Monitor = args.TryPostProcessResult(TraderArgs.Monitor, onOff) |> Option.defaultValue false }
    let home = $"/desks/{settings.Name}/"
    if settings.Forget <> "" && not (List.contains settings.Forget settings.Follow) then
        args.Raise("--forget must be one of --follow, or empty") // exit 2, like Argu's own
    if not (settings.Subtrees |> List.exists (fun tree -> Query.startsWith tree home)) then
        args.Raise($"--subtrees must hold {home}: the desk writes its valuation there and reads it back")
    settings

// --- the pipes: PAIR sockets over inproc -----------------------------------------------------

// [inproc] Threads of one process joined through one context (NetMQ's, implicit: one per process):
// an inproc:// endpoint exists only inside it, and messages pass between threads as they are, no
// bytes on any wire. The main thread binds each pipe before the agent's thread connects to it.
let pipeAddress (agent: string) = $"inproc://desk-{agent}"

// [PAIR] Exactly one peer, known in advance: the two ends of a pipe between the main thread and one
// agent. It never drops and never routes; at its high-water mark (the default, 1000) a send blocks.
// No maximum message size on a pipe: the limit applies where bytes are decoded from a connection,
// and inproc has none. Linger 0: an inproc send hands the message to the peer's queue itself, so nothing
// is left to flush at close.
/// One end of a pipe.
let pipeEnd () =
    let pipe = new PairSocket()
    pipe.Options.Linger <- TimeSpan.Zero
    pipe

let ascii (text: string) = Encoding.ASCII.GetBytes text
let STOP = "STOP"B
let Forever = -1L // a poll without a timeout: a command or a message wakes it

/// The agent's end of its pipe, made in the agent's thread: it connects to the end the main thread
/// bound before starting the thread, so the connect always finds it.
type Pipe(agent: string) =
    let socket = pipeEnd ()
    do socket.Connect(pipeAddress agent)

    member _.Socket = socket

    /// Report an event: frame 0 its name, frame 1 its JSON with "agent", then the values the main
    /// thread acts on. The main thread is the only writer to stdout: it writes frame 1 as a line.
    member _.Tell(event: string, fields: (string * obj) list, ?extras: byte[] list) =
        let json = eventJson event (("agent", box agent) :: fields)
        socket.SendMultipartBytes(ascii event :: utf8.GetBytes json :: defaultArg extras [])

    /// The examples' `emit`, for the code an agent shares with its example's role.
    member this.Emit (event: string) (fields: (string * obj) list) = this.Tell(event, fields)

    member this.Error(code: string, reason: string) =
        this.Tell("error", [ "code", box code; "reason", box reason ])

    member this.BadCommand(reason: string) = this.Error("bad-command", reason)

    member this.NotACommand(frames: byte[] list) =
        this.BadCommand $"not a command of the {agent} agent: {Query.quoteFrames frames}"

    /// The next command, if there is one after all (a poll's PollIn is a hint, not a promise).
    member _.Command() = receiveIfReady socket

    interface IDisposable with
        member _.Dispose() = socket.Dispose()

/// An agent's thread: connect its pipe, run its part (set up its sockets, report ready, serve until
/// STOP), report stopped with the counters the part returns, by then with its sockets closed. A
/// ZeroMQ socket is not thread-safe: an agent's sockets are made, used and closed in this thread only.
let runAgent (agent: string) (part: Pipe -> (string * obj) list) () =
    use pipe = new Pipe(agent)
    let counters =
        try
            part pipe
        with error -> // a bug, not a peer: still say stopped, so that the desk fails and exits
            pipe.Error("crashed", error.Message)
            []
    pipe.Tell("stopped", counters)

/// One of an agent's network sockets, set up in the agent's thread, which owns it: the linger given
/// (ms) and its example's maximum message size, set before bind or connect; with --monitor on, its
/// monitor, attached before the bind or connect (it runs on a thread of its own and writes its
/// socket-event lines itself, the only lines that do not go up a pipe). Dispose the monitor it
/// returns before the socket.
let agentSocket (settings: TraderSettings) (socket: NetMQSocket) (flag: string) (maxMessage: int64) (linger: int) =
    socket.Options.Linger <- TimeSpan.FromMilliseconds(float linger)
    socket.Options.MaxMsgSize <- maxMessage
    SocketMonitor.watch socket flag settings.Monitor

// --- chat agent: a chat client ---------------------------------------------------------------

/// The chat agent's one request in flight: REQ is strict lockstep.
type ChatRequest =
    | Join
    | KeepAlive
    | Posting of text: string

let Keepalive = 1000L // ms without a request before a keep-alive (the chat client's default)

/// Report a roster when it differs from the last one; return it as the last one.
let rosterSeen (pipe: Pipe) (last: string list) (handles: string list) =
    if handles <> last then pipe.Tell("roster", [ "handles", box handles ])
    handles

let chatAgent (settings: TraderSettings) (pipe: Pipe) =
    let me = utf8.GetBytes settings.Name
    // SUB first, created and connected, so that its subscription starts travelling as early as
    // possible; then REQ.
    use sub = new SubscriberSocket()
    // [REQ] Strict lockstep: one request in flight, no second send before its reply. So the agent
    // sends only when `inFlight` is empty, and every reply empties it.
    use req = new RequestSocket()
    // [linger] 0 on both: closing them at STOP drops a request or a subscription still queued for a
    // server that is gone; the desk owes the chat nothing at exit.
    // [max size] Every agent's network socket takes its example's maximum message size, sized from
    // that protocol's largest frame (chat 8192, ticker and valuation 256, query 1024), set before
    // connect or bind: a bigger frame is dropped with its sender's connection.
    use _ = agentSocket settings sub "chat-broadcasts" Chat.MaxMessage 0
    use _ = agentSocket settings req "chat-requests" Chat.MaxMessage 0
    // [SUB] Subscribed to "" before it connects: a prefix of every frame 0, posts and rosters alike;
    // the subscription travels as soon as the connection starts.
    sub.Subscribe ""
    let waiting = Queue<string>() // POSTed texts, in order
    let mutable roster: string list = []
    // [slow joiner] A SUB hears only what is published once its subscription has reached the
    // server. The server broadcasts a roster every heartbeat: from the first broadcast on, no post
    // can be missed, and only then does the agent join.
    let mutable heard = false
    let mutable joined = false
    let mutable everyone = false // a roster of --chat-clients: everyone listens before anyone talks
    let mutable inFlight: ChatRequest option = None
    let mutable lastRequest = nowMs ()
    let mutable sent = 0
    let mutable received = 0
    let mutable running = true
    try
        endpoint "connect" sub.Connect settings.ChatBroadcasts
        endpoint "connect" req.Connect settings.ChatRequests
        pipe.Tell("ready", [ "handle", box settings.Name ])
        // [poll] The agent's loop: no deadline of its own (STOP comes up the pipe); the wait, until a
        // keep-alive falls due, else until something comes; one poll of the pipe and both sockets,
        // so that a STOP is seen however the chat is going; each ready one read without waiting
        // (POLLIN is a hint: REQ drops a reply it cannot match inside the receive), the pipe first,
        // then REQ and SUB, in PROTOCOL.md's order; then the next request, when REQ allows one.
        while running do
            let waitMs = if joined && inFlight.IsNone then max 0L (lastRequest + Keepalive - nowMs ()) else Forever
            let ready = poll [ pipe.Socket; req; sub ] waitMs
            if ready.Has pipe.Socket then
                match pipe.Command() with
                | Some [ stop ] when stop = STOP -> running <- false
                | Some [ post; text ] when post = "POST"B ->
                    match Chat.tryDecode [ text ] with
                    | Some _ when text.Length > 0 && text.Length <= Chat.MaxText ->
                        if waiting.Count < MaxWaiting then waiting.Enqueue(utf8.GetString text)
                        else pipe.BadCommand "busy"
                    | _ -> pipe.BadCommand $"a text is 1 to {Chat.MaxText} bytes of UTF-8, not {Query.quote text}"
                | Some frames -> pipe.NotACommand frames
                | None -> ()
            if ready.Has req then
                match receiveIfReady req with
                | Some reply ->
                    match Chat.replyRoster reply with
                    | Error(code, reason) -> raise (Failure(code, reason)) // rejected, malformed-reply: fatal
                    | Ok handles ->
                        roster <- rosterSeen pipe roster handles
                        everyone <- everyone || roster.Length >= settings.ChatClients
                        match inFlight with
                        | Some Join -> joined <- true
                        | Some(Posting text) ->
                            sent <- sent + 1
                            pipe.Tell("sent", [ "text", box text; "roster", box handles ])
                        | _ -> ()
                        inFlight <- None
                        lastRequest <- nowMs ()
                | None -> ()
            if ready.Has sub then
                match receiveIfReady sub with
                | Some frames ->
                    heard <- true
                    match Chat.readBroadcast frames with
                    | Chat.Roster handles ->
                        roster <- rosterSeen pipe roster handles
                        everyone <- everyone || roster.Length >= settings.ChatClients
                    | Chat.Post(handle, text) ->
                        received <- received + 1
                        pipe.Tell("received", [ "handle", box handle; "text", box text ], [ utf8.GetBytes handle ])
                    | Chat.Malformed reason -> pipe.Error("malformed-broadcast", reason)
                | None -> ()
            // The next request, when REQ's lockstep allows one: join, then posts, then keep-alives.
            let next =
                if not running || inFlight.IsSome || not heard then None
                elif not joined then Some Join
                elif everyone && waiting.Count > 0 then Some(Posting(waiting.Dequeue()))
                elif nowMs () - lastRequest >= Keepalive then Some KeepAlive
                else None
            match next with
            | Some(Posting text) -> send req [ me; utf8.GetBytes text ]
            | Some _ -> send req [ me ]
            | None -> ()
            if next.IsSome then inFlight <- next
    with Failure(code, reason) -> pipe.Error(code, reason) // then stopped, unasked: the desk fails
    [ "sent", box sent; "received", box received ]

// --- ticker agent: a ticker subscriber -------------------------------------------------------

let tickerAgent (settings: TraderSettings) (pipe: Pipe) =
    use sub = new SubscriberSocket()
    use _ = agentSocket settings sub "ticks" Ticker.MaxMessage 0 // a stream: nobody is owed what is queued
    let mutable following: string list = []
    let mutable ticks = 0
    let mutable malformed = 0
    let mutable running = true
    try
        // [slow joiner] Our own topic at once, before the connect: the publisher counts the desk by it
        // and publishes nothing until every subscriber's @name has reached it. The symbols come as
        // FOLLOWs; each one's first ticks may be missed while its subscription travels upstream.
        sub.Subscribe(utf8.GetBytes("@" + settings.Name))
        endpoint "connect" sub.Connect settings.Ticks
        pipe.Tell("ready", [ "name", box settings.Name ])
        // The agent's loop: no timer, so the poll waits until the pipe or the SUB has something
        // (STOP comes up the pipe); each ready one read without waiting, the SUB first: the poll has
        // already fetched the tick it delivers next, filtered by the subscriptions of that moment,
        // and a FORGET served before it would meet it after the unsubscribe.
        while running do
            let ready = poll [ pipe.Socket; sub ] Forever
            if ready.Has sub then
                match receiveIfReady sub |> Option.map (fun frames -> Ticker.checkTick frames following settings.Seed) with
                | Some(Error(code, reason)) ->
                    malformed <- malformed + 1
                    pipe.Error(code, reason)
                | Some(Ok(symbol, sequence, timestamp, price)) ->
                    ticks <- ticks + 1
                    let fields = [ "symbol", box symbol; "sequence", box sequence; "timestamp", box timestamp; "price", box price ]
                    pipe.Tell("tick", fields, [ ascii symbol ])
                | None -> ()
            if ready.Has pipe.Socket then
                match pipe.Command() with
                | Some [ stop ] when stop = STOP -> running <- false
                | Some [ verb; symbol ] when verb = "FOLLOW"B && Ticker.isSymbol (Encoding.ASCII.GetString symbol) ->
                    let symbol = Encoding.ASCII.GetString symbol
                    if not (List.contains symbol following) && following.Length = Ticker.MaxSymbols then
                        pipe.BadCommand "busy" // --follow's bound holds for FOLLOW too
                    elif not (List.contains symbol following) then
                        sub.Subscribe(Ticker.topic symbol)
                        following <- following @ [ symbol ]
                        pipe.Tell("subscribed", [ "symbol", box symbol ])
                | Some [ verb; symbol ] when verb = "FORGET"B && Ticker.isSymbol (Encoding.ASCII.GetString symbol) ->
                    let symbol = Encoding.ASCII.GetString symbol
                    if List.contains symbol following then
                        // SUB filters what it delivers by its current subscriptions: no tick of the
                        // symbol comes after this, even one already queued.
                        sub.Unsubscribe(Ticker.topic symbol)
                        following <- following |> List.filter ((<>) symbol)
                        pipe.Tell("unsubscribed", [ "symbol", box symbol ])
                | Some frames -> pipe.NotACommand frames
                | None -> ()
    with Failure(code, reason) -> pipe.Error(code, reason)
    [ "ticks", box ticks; "malformed", box malformed ]

// --- valuation agent: the source and the sink in one thread ----------------------------------

let WAITING, GO, FINISHED = "waiting"B, "go"B, "finished"B

let valuationAgent (settings: TraderSettings) (pipe: Pipe) =
    // [PUSH] Deals orders round-robin to the workers connected when they are sent; it never drops.
    use orders = new PushSocket()
    // [PULL] Fair-queues readies and results from every connected worker.
    use results = new PullSocket()
    // [PUB] The state, fanned out to every worker; it never blocks, and drops for a worker not
    // connected yet or past its HWM: so the state is level-triggered, repeated every heartbeat.
    use control = new PublisherSocket()
    // [linger] 1000 ms on the control PUB, 0 on the others: the `finished` state must reach the
    // workers even if the desk stops right after (they leave when they hear it), and closing the
    // socket leaves it a second to go out; what the others still hold at STOP is owed to nobody.
    use _ = agentSocket settings orders "orders" Valuation.MaxMessage 0 // before the binds: `listening` too
    use _ = agentSocket settings results "results" Valuation.MaxMessage 0
    use _ = agentSocket settings control "control" Valuation.MaxMessage 1000 // PUB too decodes what subscribers send
    let workers = HashSet<string>() // workers ready for the next trade
    let values = Dictionary<uint64, int64>() // id -> the value of its first result, this trade
    let priced = Dictionary<string, int>() // worker -> results counted, this trade
    let resent = HashSet<uint64>() // every id re-dispatched, this trade
    let resending = Queue<uint64>() // ids to send again, in order
    let mutable resendIds: uint64 list = []
    let mutable count = 0UL // orders in the trade; 0 before the first VALUE
    let mutable state = WAITING
    let mutable nextId = 1UL // the next order to send the first time
    let mutable total = 0L // of the last trade completed
    let mutable quietSince = nowMs ()
    let mutable nextBeat = nowMs () // publish the state at once
    let mutable running = true
    try
        endpoint "bind" orders.Bind settings.Orders
        endpoint "bind" results.Bind settings.Results
        endpoint "bind" control.Bind settings.Control
        let bound = [ orders.Options.LastEndpoint; results.Options.LastEndpoint; control.Options.LastEndpoint ]
        let fields = List.zip [ "orders"; "results"; "control" ] (List.map box bound)
        pipe.Tell("ready", fields, List.map ascii bound) // the main thread's own ready names them
        // [poll] The agent's loop: no deadline of its own (STOP comes up the pipe); the wait, until
        // the next heartbeat or the end of a quiet period; one poll of the pipe, the PUSH (for room,
        // POLLOUT, only while orders wait for it) and the PULL; each ready socket served without
        // waiting, the pipe first, then PUSH and PULL in PROTOCOL.md's order; then the timers.
        while running do
            // Orders that cannot go out yet wait here: the agent never blocks in a send.
            let pending = (state = GO && nextId <= count) || resending.Count > 0
            let now = nowMs ()
            let quietDue = if state = GO && not pending then quietSince + int64 settings.Quiet else Int64.MaxValue
            let waitMs = max 0L (min nextBeat quietDue - now)
            let ready =
                pollFor [ pipe.Socket, PollEvents.PollIn
                          if pending then orders, PollEvents.PollOut
                          results, PollEvents.PollIn ] waitMs
            if ready.Has pipe.Socket then
                match pipe.Command() with
                | Some [ stop ] when stop = STOP -> running <- false
                | Some [ verb; size ] when verb = "VALUE"B && size.Length = 8 ->
                    let n = BinaryPrimitives.ReadUInt64BigEndian size
                    if n < 1UL || n > uint64 MaxTrade then
                        pipe.BadCommand $"a trade is 1 to {MaxTrade} orders, not {n}"
                    elif count > 0UL && (state <> FINISHED || resending.Count > 0) then
                        pipe.BadCommand "busy" // a trade runs, or the orders of a resend still go out
                    else // a new trade: its workers are those that say ready from now on, or said it since the last
                        count <- n
                        nextId <- 1UL
                        values.Clear()
                        priced.Clear()
                        resent.Clear()
                        resending.Clear()
                        state <- WAITING
                        send control [ state ] // at once; the heartbeat repeats it
                | Some frames -> pipe.NotACommand frames
                | None -> ()
            // [HWM] Each worker's queue holds 1000 orders (the default high-water mark); with every
            // queue full, or no worker connected, PUSH is in the mute state and a send would block.
            // So the agent sends only what PUSH takes without waiting (NetMQ: a send with a zero
            // timeout) after the poll saw room: a thousand at most per turn, a drain on purpose,
            // bounded so that the pipe and the results get their turn.
            if ready.Has orders then
                let mutable room = true
                let mutable burst = 0
                while room && burst < 1000 && ((state = GO && nextId <= count) || resending.Count > 0) do
                    let first = state = GO && nextId <= count
                    let id = if first then nextId else resending.Peek()
                    // The same bytes every time: an order is a function of the seed and its id.
                    room <- orders.TrySendMultipartBytes(TimeSpan.Zero, Valuation.orderFrames settings.Seed id :> seq<byte[]>)
                    if room then
                        burst <- burst + 1
                        if first then
                            nextId <- nextId + 1UL
                            if nextId > count then pipe.Tell("sent", [ "orders", box count ])
                        else
                            resending.Dequeue() |> ignore
                            if resending.Count = 0 then pipe.Tell("resent", [ "ids", box resendIds ])
            if ready.Has results then
                match receiveIfReady results with
                | Some(kind :: _ as frames) when kind = "ready"B ->
                    match Valuation.checkReady frames with
                    | Ok worker -> if workers.Add worker then pipe.Tell("worker", [ "name", box worker ])
                    | Error(code, reason) -> pipe.Error(code, reason) // not a worker: it does not count
                | Some frames ->
                    match Valuation.checkResult frames (int count) settings.Seed with
                    | Error(code, reason) -> pipe.Error(code, reason)
                    | Ok(worker, id, _) when values.ContainsKey id && resent.Contains id ->
                        pipe.Tell("late-duplicate", [ "id", box id; "worker", box worker ]) // asked for twice
                    | Ok(worker, id, _) when values.ContainsKey id ->
                        pipe.Error("duplicate", $"a second result for order {id}, from {worker}")
                    | Ok(worker, id, amount) ->
                        values[id] <- amount
                        priced[worker] <- (match priced.TryGetValue worker with | true, n -> n + 1 | _ -> 1)
                        quietSince <- nowMs ()
                        pipe.Tell("result", [ "id", box id; "worker", box worker ])
                        if uint64 values.Count = count then
                            state <- FINISHED // the workers leave when they hear it
                            send control [ state ]
                            total <- Seq.sum values.Values
                            let fields = [ "total", box total; "workers", box priced
                                           "resent", box (resent |> Seq.sort |> List.ofSeq) ]
                            pipe.Tell("complete", fields, [ Valuation.i64Frame total ])
                            workers.Clear() // the next trade waits for new readies
                | None -> ()
            // Each worker heard the control channel before it said ready: none can miss `go`.
            if state = WAITING && count > 0UL && workers.Count >= settings.Workers then
                state <- GO
                send control [ state ]
                pipe.Tell("started", [ "workers", box workers.Count ])
                quietSince <- nowMs ()
            let now = nowMs ()
            if state = GO && not (nextId <= count || resending.Count > 0) && now - quietSince >= int64 settings.Quiet then
                // PUSH dropped what was queued for a worker that died, and nothing says so: only
                // silence. This thread is the source too: it sends every missing id again itself.
                resendIds <- [ for id in 1UL .. count do if not (values.ContainsKey id) then id ]
                resent.UnionWith resendIds
                resendIds |> List.iter resending.Enqueue
                pipe.Tell("resend", [ "ids", box resendIds ])
                quietSince <- now
            if now >= nextBeat then
                send control [ state ] // level-triggered: a late subscriber learns the state anyway
                nextBeat <- now + int64 settings.Heartbeat
    with Failure(code, reason) -> pipe.Error(code, reason)
    [ "orders", box values.Count; "total", box total ]

// --- query agent: a CHP facade ---------------------------------------------------------------

let queryAgent (settings: TraderSettings) (pipe: Pipe) =
    // [DEALER] Sends and receives freely, without REQ's lockstep and without an envelope of its own:
    // every subtree's ICANHAZ? goes out at once, and only the subtree in a KTHXBAI says which
    // request it answers.
    use snapshot = new DealerSocket()
    use updates = new SubscriberSocket()
    // [XPUB] To the collector: a PUB that hands us each subscription as a message (first byte 1 or
    // 0), so that it tells us when the collector's subscription has arrived: writes wait for it.
    use collector = new XPublisherSocket()
    use _ = agentSocket settings snapshot "snapshot" Query.MaxMessage 0 // before the connects
    use _ = agentSocket settings updates "updates" Query.MaxMessage 0
    use _ = agentSocket settings collector "collector" Query.MaxMessage 1000 // our last write may be queued at STOP
    // The facade's map, its checks and its per-subtree watermarks; its own --writes are not used.
    let facadeSettings: Query.FacadeSettings =
        { Snapshot = settings.Snapshot; Updates = settings.Updates; Collector = settings.Collector
          Name = settings.Name; Subtrees = settings.Subtrees; Count = 1; Writes = 0; Ttl = 1; Silence = 3000
          Timeout = 0; Monitor = settings.Monitor }
    let facade = new Query.Facade(facadeSettings, pipe.Emit)
    let writes = Queue<string * byte[]>() // WRITEs waiting for the snapshots and the collector
    let unread = ResizeArray<string * byte[]>() // written, not read back yet
    let mutable hugged = false
    let mutable collectorLive = false
    let mutable running = true
    try
        // [SUB] Prefix filters on frame 0, one per subtree, then HUGZ, subscribed after the connect as
        // the facade's (Query.FacadeSockets says why): they go out in that order, HUGZ last.
        endpoint "connect" updates.Connect settings.Updates
        for tree in settings.Subtrees do
            updates.Subscribe(Query.bytesOf tree)
        updates.Subscribe Query.HUGZ // last: once a HUGZ arrives, every subscription before it is in place
        endpoint "connect" snapshot.Connect settings.Snapshot
        endpoint "connect" collector.Connect settings.Collector
        pipe.Tell("ready", [ "name", box settings.Name; "subtrees", box settings.Subtrees ])
        // The agent's loop: no timer (STOP comes up the pipe), so the poll waits until something
        // comes; each ready socket read without waiting, the pipe first, then DEALER, SUB and XPUB
        // in PROTOCOL.md's order; then the writes that may go out.
        while running do
            let synced = hugged && facade.Waiting.IsEmpty
            // Before the HUGZ, the SUB only; while the snapshots come, the DEALER only (the SUB's
            // updates wait in its queue, in order); then both.
            let polled =
                [ pipe.Socket :> NetMQSocket
                  if hugged then snapshot
                  if not hugged || synced then updates
                  collector ]
            let ready = poll polled Forever
            if ready.Has pipe.Socket then
                match pipe.Command() with
                | Some [ stop ] when stop = STOP -> running <- false
                | Some [ verb; key; value ] when verb = "WRITE"B ->
                    let key' = Query.text key
                    if not (Query.isKey key' && settings.Subtrees |> List.exists (fun tree -> Query.startsWith tree key')) then
                        pipe.BadCommand $"not a key in our subtrees: {Query.quote key}"
                    elif value.Length < 1 || value.Length > Query.MaxValue then
                        pipe.BadCommand $"a value of {value.Length} bytes, not 1 to {Query.MaxValue}"
                    elif writes.Count >= MaxWaiting then pipe.BadCommand "busy"
                    else writes.Enqueue((key', value))
                | Some frames -> pipe.NotACommand frames
                | None -> ()
            if ready.Has snapshot then
                match Query.receiveMessage snapshot with
                | Some frames when not synced -> facade.OnSnapshot frames
                | Some frames -> pipe.Error("unexpected-snapshot", $"{Query.quote frames.Head} after every KTHXBAI")
                | None -> ()
            if ready.Has updates then
                match Query.receiveMessage updates with
                | Some frames when not hugged ->
                    // The slow joiner: drop what comes before a HUGZ (the snapshots cover it), then
                    // ask for every subtree at once on the one DEALER.
                    if Query.isHugz frames then
                        hugged <- true
                        for tree in settings.Subtrees do
                            send snapshot [ Query.ICANHAZ; Query.bytesOf tree ]
                | Some frames ->
                    match facade.OnUpdate frames with
                    | Some kv ->
                        // Every KVPUB applied, for the page (a delete's value is ""); the main thread
                        // keeps each key's latest for the page's replay.
                        let fields = [ "key", box kv.Key; "value", box (Ticker.hex kv.Value); "sequence", box kv.Sequence ]
                        pipe.Tell("applied", fields, [ Query.bytesOf kv.Key ])
                        match Seq.tryFindIndex (fun (key, value) -> key = kv.Key && value = kv.Value) unread with
                        | Some i ->
                            unread.RemoveAt i
                            pipe.Tell("read-back", fields, [ Query.bytesOf kv.Key; kv.Value ])
                        | None -> ()
                    | None -> ()
                | None -> ()
            if ready.Has collector then
                match receiveFrameIfReady collector with
                | Some [| 1uy |] -> collectorLive <- true // the collector's subscription to everything
                | _ -> ()
            if running && hugged && facade.Waiting.IsEmpty && collectorLive then
                while writes.Count > 0 do
                    let key, value = writes.Dequeue()
                    send collector (Query.kvset key [||] value) // XPUB never blocks
                    unread.Add((key, value))
                    pipe.Tell("wrote", [ "key", box key; "value", box (Ticker.hex value); "ttl", box 0 ])
    with Failure(code, reason) -> pipe.Error(code, reason)
    let map = SortedDictionary<string, string>(StringComparer.Ordinal)
    for KeyValue(key, value) in facade.Map do
        map[key] <- Ticker.hex value
    [ "sequence", box facade.Last; "first", box facade.First; "map", box map
      "applied", box facade.Applied; "discarded", box facade.Discarded ]

// --- the main thread -------------------------------------------------------------------------

/// What the main thread counts, and the commands the agents' events call for. It reads only frame
/// 0 and frames 2...: never the JSON.
type Scenario(settings: TraderSettings) =
    let ticks = Dictionary<string, int>()
    let received = Dictionary<string, int>() // handle -> posts received
    let bump (counts: Dictionary<string, int>) key =
        counts[key] <- (match counts.TryGetValue key with | true, n -> n + 1 | _ -> 1)
        counts[key]
    let key = ascii $"/desks/{settings.Name}/valuation"
    let mutable following = settings.Follow
    let mutable posts = 0 // POSTs handed to the chat agent
    let mutable sent = 0
    let mutable written: byte[] option = None // the trade's total, as written
    let mutable readBack = false
    let mutable synced = 0

    /// Start-up, step 4.
    member _.Start =
        [ for symbol in settings.Follow do
              "ticker", [ "FOLLOW"B; ascii symbol ]
          if settings.Trade > 0 then
              "valuation", [ "VALUE"B; Valuation.u64Frame (uint64 settings.Trade) ] ]

    /// The commands an event of `agent` calls for, as (agent, frames). The pipe matters: the
    /// valuation agent's `sent` (its orders) is not the chat agent's.
    member _.OnEvent(agent: string, event: string, extras: byte[] list) =
        match event, extras with
        | "tick", [ symbol ] ->
            let symbol = Encoding.ASCII.GetString symbol
            let n = bump ticks symbol
            [ // Prices drive the chat: one post per tick, until --posts.
              if posts < settings.Posts then
                  posts <- posts + 1
                  "chat", [ "POST"B; utf8.GetBytes(Chat.postText settings.Name posts) ]
              if symbol = settings.Forget && n >= settings.ForgetAfter && List.contains symbol following then
                  following <- following |> List.filter ((<>) symbol)
                  "ticker", [ "FORGET"B; ascii symbol ] ]
        | "sent", _ when agent = "chat" -> sent <- sent + 1; []
        | "received", [ handle ] -> bump received (utf8.GetString handle) |> ignore; []
        | "complete", [ total ] -> // the valuation goes to the engine, and comes back
            let value = ascii (string (BinaryPrimitives.ReadInt64BigEndian total))
            written <- Some value
            [ "query", [ "WRITE"B; key; value ] ]
        | "synced", _ -> synced <- synced + 1; []
        | "read-back", [ k; value ] ->
            if k = key && Some value = written then readBack <- true
            []
        | _ -> []

    /// The page's FOLLOW and FORGET change the symbols the ticker part waits for, as --forget does.
    member _.Follow(symbol: string) =
        if not (List.contains symbol following) then following <- following @ [ symbol ]

    member _.Forget(symbol: string) = following <- following |> List.filter ((<>) symbol)

    member _.Done =
        let ticksOf symbol = match ticks.TryGetValue symbol with | true, n -> n | _ -> 0
        let ticker =
            following |> List.forall (fun symbol -> ticksOf symbol >= settings.TickCount)
            && not (List.contains settings.Forget following)
        let everyone = received.Values |> Seq.filter (fun n -> n >= settings.Posts) |> Seq.length
        let chat = settings.Posts = 0 || (sent >= settings.Posts && everyone >= settings.ChatClients)
        let valuation = settings.Trade = 0 || written.IsSome
        let query = synced >= settings.Subtrees.Length && (settings.Trade = 0 || readBack)
        ticker && chat && valuation && query

/// The main thread's end of an agent's pipe, and the agent's thread.
type Agent = { Name: string; Pipe: PairSocket; Thread: Thread; mutable Stopped: bool }

/// Why the desk stops.
type Outcome =
    | Running
    | Complete
    | Signalled
    | TimedOut
    | AgentFailed of agent: string

let agentParts: (string * (TraderSettings -> Pipe -> (string * obj) list)) list =
    [ "chat", chatAgent; "ticker", tickerAgent; "valuation", valuationAgent; "query", queryAgent ]

/// The trade the valuation agent is on, for the page: whether one runs (a second VALUE is 409), and
/// its results counted into `progress` (one line per order would be a million in a big trade).
type Trade() =
    let mutable orders = 0UL
    let mutable results = 0
    let mutable shown = 0 // the count in the last progress line
    let mutable shownAt = 0L
    let mutable running = false

    /// The desk sent VALUE: a trade runs until its complete.
    member _.Start(size: uint64) =
        orders <- size
        results <- 0
        shown <- 0
        running <- true

    member _.Running = running
    member _.Result() = results <- results + 1
    member _.Complete() = running <- false

    /// A progress line when one is due: at most every 100 ms while the count changes; `last`, right
    /// before the trade's complete, in any case.
    member _.Progress(now: int64, last: bool) =
        if last || (results <> shown && now - shownAt >= 100L) then
            shown <- results
            shownAt <- now
            Some(eventJson "progress" [ "agent", box "valuation"; "results", box results; "orders", box orders ])
        else None

/// The key under which the page's replay keeps only an event's latest line: a symbol's tick, a
/// key's applied. The main thread never parses the JSON: the key travels in frame 2.
let replayKey (event: string) (extras: byte[] list) =
    match event, extras with
    | "tick", [ symbol ] -> Some("tick " + Encoding.ASCII.GetString symbol)
    | "applied", [ key ] -> Some("applied " + utf8.GetString key)
    | _ -> None

/// Write an event's frame 1 with `say`, unchanged, and return its name and the frames after the JSON.
let relay (say: string -> byte[] list -> string -> unit) (frames: byte[] list) =
    // [multipart] A pipe message arrives whole or not at all: its name, its JSON and the values the
    // main thread acts on come together, and which frames there are is matched, never assumed.
    match frames with
    | name :: json :: extras ->
        let name = Encoding.ASCII.GetString name
        say name extras (utf8.GetString json)
        name, extras
    | _ -> "", [] // the desk trusts its pipes: its own agents send only these

/// A command down an agent's pipe. Never blocking: the main thread sends few commands, so a pipe that
/// is full belongs to an agent that no longer reads it.
let command (agent: Agent) (frames: byte[] list) =
    if not (agent.Pipe.TrySendMultipartBytes(TimeSpan.Zero, frames :> seq<byte[]>)) then
        log $"desk: the {agent.Name} agent's pipe is full, a command is lost"

/// A page's `POST /value` body: N in decimal digits, 1 to MaxTrade.
let tradeOf (body: string) =
    let digits = body.TrimStart '0'
    if body <> "" && body |> Seq.forall Char.IsAsciiDigit && digits.Length <= 7 && digits <> ""
       && int digits <= MaxTrade then Some(uint64 digits)
    else None

/// Start-up, step 2, for one agent: bind its pipe, start its thread, and wait for its first event,
/// its `ready` unless its bind or connect failed. Returns the agent, and that event's name and
/// frames 2..., or why the desk stops first (a signal, the deadline).
let start (settings: TraderSettings) (stop: StopSignal) (deadline: Deadline) say (name: string) part =
    // Bind before the agent connects: the inproc order that works with every library.
    let pipe = pipeEnd ()
    pipe.Bind(pipeAddress name)
    // A background thread: an agent that never stops (agent-stuck) does not keep the process.
    let thread = Thread(ThreadStart(runAgent name (part settings)), IsBackground = true, Name = $"desk-{name}")
    thread.Start()
    let agent = { Name = name; Pipe = pipe; Thread = thread; Stopped = false }
    let mutable first = None
    let mutable why = None
    while first.IsNone && why.IsNone do
        if stop.Raised then why <- Some Signalled
        elif deadline.Expired then why <- Some TimedOut
        else
            let ready = poll [ pipe ] (deadline.Cap 100L) // at most 100 ms: .NET sees a signal
            if ready.Has pipe then first <- receiveIfReady pipe
    match first, why with
    | Some frames, _ -> agent, Ok(relay say frames)
    | None, why -> agent, Error why.Value

/// Shut-down, steps 1 and 2: STOP to every agent at once (they are independent), each as soon as
/// its pipe takes it (POLLOUT): an agent stopped by the deadline during its start-up may not have
/// connected its end yet, and a PAIR without its peer takes no message. Then wait for their
/// `stopped`, 5000 ms at most, still writing what they said before it.
let shutDown (agents: ResizeArray<Agent>) (say: string -> byte[] list -> string -> unit) =
    let told = HashSet<string>([ for agent in agents do if agent.Stopped then agent.Name ])
    let giveUp = nowMs () + 5000L
    while agents |> Seq.exists (fun agent -> not agent.Stopped) && nowMs () < giveUp do
        let waiting =
            [ for agent in agents do
                  if not agent.Stopped then
                      let events = if told.Contains agent.Name then PollEvents.PollIn else PollEvents.PollIn ||| PollEvents.PollOut
                      agent.Pipe :> NetMQSocket, events ]
        let ready = pollFor waiting (min 100L (max 0L (giveUp - nowMs ())))
        for agent in agents do
            if not (told.Contains agent.Name) && ready.Has agent.Pipe
               && agent.Pipe.TrySendMultipartBytes(TimeSpan.Zero, [ STOP ] :> seq<byte[]>) then
                told.Add agent.Name |> ignore
            if ready.Has agent.Pipe then
                // Everything the pipe holds, up to `stopped`: a drain on purpose, bounded by the
                // pipe's high-water mark (1000), since nothing comes after `stopped`.
                let mutable more = true
                while more && not agent.Stopped do
                    match receiveIfReady agent.Pipe |> Option.map (relay say) with
                    | Some("stopped", _) -> agent.Stopped <- true // nothing comes after it
                    | Some _ -> ()
                    | None -> more <- false

let runTrader (settings: TraderSettings) =
    // SIGTERM and SIGINT raise a flag on .NET's own signal thread; this thread looks at it at least
    // every 100 ms. No agent ever sees a signal: they hear STOP.
    use stop = new StopSignal()
    let deadline = Deadline(settings.Timeout)
    // The page's socket, bound before any thread starts: a failed bind is `error` bind, exit 1.
    let web = if settings.Http = "" then None else Some(new Web.Web(settings.Http, settings.Monitor))
    let scenario = Scenario(settings)
    let trade = Trade()
    let agents = ResizeArray<Agent>()
    let mutable outcome = Running
    let mutable complete = false // the scenario was done (with --http, the desk serves on)
    let mutable endpoints = []

    let publish (key: string option) (line: string) = web |> Option.iter (fun web -> web.Publish(line, key))
    /// Every line the desk writes goes through here: to stdout, and to the page's event streams.
    /// A `result` is not sent to the page but counted into `progress`, which the page alone gets.
    let say (event: string) (extras: byte[] list) (line: string) =
        match event with
        | "result" -> trade.Result()
        | "complete" ->
            trade.Progress(nowMs (), true) |> Option.iter (publish (Some "progress"))
            trade.Complete()
        | _ -> ()
        writeEvent event line
        if event <> "result" then publish (replayKey event extras) line
    let sayEvent (event: string) (fields: (string * obj) list) = say event [] (eventJson event fields)

    // Start-up: one agent at a time, in order, each `ready` its own proof that its sockets exist.
    for name, part in agentParts do
        if outcome = Running then
            let agent, first = start settings stop deadline say name part
            agents.Add agent
            match first with
            | Ok("ready", extras) -> if name = "valuation" then endpoints <- extras
            | Ok(event, _) -> // an error, then stopped: its bind or connect failed
                agent.Stopped <- (event = "stopped")
                outcome <- AgentFailed name
            | Error why -> outcome <- why

    if outcome = Running then
        let http = web |> Option.map (fun web -> web.Endpoint) |> Option.defaultValue ""
        match endpoints |> List.map Encoding.ASCII.GetString with
        | [ orders; results; control ] ->
            sayEvent "ready" [ "name", box settings.Name; "orders", box orders; "results", box results
                               "control", box control; "http", box http ]
        | _ -> sayEvent "ready" [ "name", box settings.Name; "http", box http ]
        web |> Option.iter (fun web -> web.Serving()) // the start-up lines are all in the replay
        let byName name = agents |> Seq.find (fun agent -> agent.Name = name)
        /// Every command goes down its pipe here; a VALUE starts a trade, the scenario's or the page's.
        let order (name: string) (frames: byte[] list) =
            match frames with
            | [ verb; size ] when verb = "VALUE"B -> trade.Start(BinaryPrimitives.ReadUInt64BigEndian size)
            | _ -> ()
            command (byName name) frames
        for name, frames in scenario.Start do
            order name frames

        /// A page's POST, whole: its body checked, reported as a `command` event, then handed to its
        /// agent (204); what the agent does with it comes on the event stream.
        let onCommand (target: string) (body: string) : Web.Answer =
            let hand (agent: string) (verb: string) (field: string * obj) (argument: byte[]) =
                sayEvent "command" [ "command", box verb; field ]
                order agent [ ascii verb; argument ]
                204, ""
            match target with
            | "/follow" | "/forget" when not (Ticker.isSymbol body) -> 400, "a symbol is 1 to 8 of A-Z"
            | "/follow" ->
                scenario.Follow body
                hand "ticker" "FOLLOW" ("symbol", box body) (ascii body)
            | "/forget" ->
                scenario.Forget body
                hand "ticker" "FORGET" ("symbol", box body) (ascii body)
            | "/chat" when utf8.GetByteCount body > Chat.MaxText || body = "" ->
                400, $"a chat text is 1 to {Chat.MaxText} bytes of UTF-8"
            | "/chat" -> hand "chat" "POST" ("text", box body) (utf8.GetBytes body)
            | _ -> // "/value": the only other target Web hands over
                match tradeOf body with
                | None -> 400, $"a trade is 1 to {MaxTrade} orders, in decimal digits"
                | Some _ when trade.Running -> 409, "a trade runs: wait for its complete"
                | Some n -> hand "valuation" "VALUE" ("orders", box n) (Valuation.u64Frame n)

        // [poll] The main thread's loop, in five steps: the stop flag and the deadline; the wait, at
        // most 100 ms (.NET has no EINTR: no signal wakes NetMQ's poll, nor does a page's deadline);
        // one poll of the four pipes and the page's socket; each ready one read without waiting
        // (POLLIN is a hint), the pipes in the agents' order, then the page; then the timers: the
        // page's deadlines and progress, and whether the scenario is done. Each event is written,
        // then acted on.
        let page = [ for web in Option.toList web -> web.Socket :> NetMQSocket ]
        while outcome = Running do
            if stop.Raised then outcome <- Signalled
            elif deadline.Expired then outcome <- TimedOut
            else
                let ready = poll ([ for agent in agents -> agent.Pipe :> NetMQSocket ] @ page) (deadline.Cap 100L)
                for agent in agents do
                    if ready.Has agent.Pipe then
                        // A drain on purpose: up to 64 messages per pipe and turn, so that a busy agent
                        // (a trade's results) is read at its pace, yet cannot starve the others.
                        let mutable turn = 0
                        while turn < 64 && outcome = Running do
                            turn <- turn + 1
                            match receiveIfReady agent.Pipe |> Option.map (relay say) with
                            | Some("stopped", _) ->
                                agent.Stopped <- true
                                outcome <- AgentFailed agent.Name // it stopped by itself
                            | Some(event, extras) ->
                                for name, frames in scenario.OnEvent(agent.Name, event, extras) do
                                    order name frames
                            | None -> turn <- Int32.MaxValue
                let now = nowMs ()
                match web with
                | Some web ->
                    if ready.Has web.Socket then
                        web.Receive(now, onCommand)
                    web.Expire now
                    trade.Progress(now, false) |> Option.iter (publish (Some "progress"))
                | None -> ()
                if outcome = Running && scenario.Done then
                    complete <- true
                    // With --http the desk is a page for a person: it serves on until a signal.
                    if web.IsNone then outcome <- Complete

    shutDown agents say

    let stuck = [ for agent in agents do if not agent.Stopped then agent.Name ]
    let failure =
        match outcome with
        | TimedOut -> Some("timeout", $"the scenario was not done after {settings.Timeout} ms")
        | AgentFailed name -> Some("agent-failed", $"the {name} agent stopped by itself")
        | _ -> None
    if not stuck.IsEmpty then
        // Terminating the context would wait for the stuck agent's sockets forever: exit without it.
        failure |> Option.iter (fun (code, reason) -> sayEvent "error" [ "code", box code; "reason", box reason ])
        let names = String.Join(", ", stuck)
        raise (Failure("agent-stuck", $"no stopped within 5000 ms of STOP from: {names}"))
    for agent in agents do
        agent.Thread.Join() // it has returned, or is about to: its pipe end closed after `stopped`
    for agent in agents do
        agent.Pipe.Dispose()
    // The page's socket last, linger 0: an open event stream has nothing worth waiting for.
    web |> Option.iter (fun web -> web.Close())
    // Terminate the context: it returns once every socket of every thread is closed and its linger
    // has run out (the valuation's `finished`, the query agent's last write).
    NetMQConfig.Cleanup(true)
    match failure with
    | Some(code, reason) -> raise (Failure(code, reason))
    | None ->
        sayEvent "done" [ "complete", box complete
                          "agents", box [ for agent in agents -> agent.Name ] ]

/// Validate the command line of the desk (Argu raises on a bad value) and return its run.
let role (args: ParseResults<DeskArgs>) : unit -> unit =
    match args.GetSubCommand() with
    | Trader trader ->
        let settings = traderSettings trader
        fun () -> runTrader settings
