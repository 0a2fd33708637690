/// chat: a roster server over REQ/REP with a PUB broadcast channel (examples/chat/PROTOCOL.md).
module Btb.Chat

open System
open System.Collections.Generic
open Argu
open NetMQ
open NetMQ.Sockets
open Btb.Events

let MaxHandle = MaxName // bytes of UTF-8 (the contract's MaxName)
let MaxText = 4096 // bytes of UTF-8
/// ZMQ_MAXMSGSIZE on all four sockets: NetMQ drops a bigger frame together with the sender's
/// connection, and it bounds subscriptions too, so no peer can make a role allocate without bound.
/// The largest legal frame is a 4096-byte text; the margin lets a too-long text still reach the
/// server's own `text-too-long` rule, and leaves room for CURVE's per-frame overhead.
let MaxMessage = 8192L

// --- command line ----------------------------------------------------------------------------

type ServerArgs =
    | Requests of endpoint: string
    | Broadcasts of endpoint: string
    | Timeout of ms: int
    | Heartbeat of ms: int
    | Expiry of ms: int
    | Security of mechanism: string
    | Curve_Secret of z85: string
    | Curve_Clients of z85s: string
    | Plain_User of name: string
    | Plain_Password of password: string
    | Monitor of on_off: string

    interface IArgParserTemplate with
        member this.Usage =
            match this with
            | Requests _ -> "REP endpoint to bind (default tcp://127.0.0.1:5555)"
            | Broadcasts _ -> "PUB endpoint to bind (default tcp://127.0.0.1:5556)"
            | Timeout _ -> "longest run in ms, 0 for no limit (default 0)"
            | Heartbeat _ -> "interval between roster broadcasts in ms (default 100)"
            | Expiry _ -> "silence in ms after which a handle leaves the roster (default 5000)"
            | Security _ -> "null, plain or curve (default null)"
            | Curve_Secret _ -> "the server's CURVE secret key"
            | Curve_Clients _ -> "the client public keys admitted, comma-separated (not in NetMQ)"
            | Plain_User _ -> "the PLAIN username (not in NetMQ)"
            | Plain_Password _ -> "the PLAIN password (not in NetMQ)"
            | Monitor _ -> "on: report every socket's connection events (default off)"

type ClientArgs =
    | Requests of endpoint: string
    | Broadcasts of endpoint: string
    | Timeout of ms: int
    | [<Mandatory>] Name of handle: string
    | Count of posts: int
    | Clients of handles: int
    | Keepalive of ms: int
    | Retry of ms: int
    | Pace of ms: int
    | Security of mechanism: string
    | Curve_Secret of z85: string
    | Curve_Public of z85: string
    | Curve_Server of z85: string
    | Plain_User of name: string
    | Plain_Password of password: string
    | Monitor of on_off: string

    interface IArgParserTemplate with
        member this.Usage =
            match this with
            | Requests _ -> "REP endpoint to connect (default tcp://127.0.0.1:5555)"
            | Broadcasts _ -> "PUB endpoint to connect (default tcp://127.0.0.1:5556)"
            | Timeout _ -> "longest run in ms, 0 for no limit (default 30000)"
            | Name _ -> "the client's handle (required)"
            | Count _ -> "number of posts to send (default 5)"
            | Clients _ -> "roster size to wait for before posting (default 1)"
            | Keepalive _ -> "keep-alive interval in ms (default 1000)"
            | Retry _ -> "how long a request waits for its reply before it is resent, in ms (default 2000)"
            | Pace _ -> "time between a post's reply and the next post, in ms (default 0)"
            | Security _ -> "null, plain or curve (default null)"
            | Curve_Secret _ -> "the client's CURVE secret key"
            | Curve_Public _ -> "the client's CURVE public key"
            | Curve_Server _ -> "the server's CURVE public key"
            | Plain_User _ -> "the PLAIN username (not in NetMQ)"
            | Plain_Password _ -> "the PLAIN password (not in NetMQ)"
            | Monitor _ -> "on: report every socket's connection events (default off)"

[<RequireSubcommand>]
type ChatArgs =
    | [<CliPrefix(CliPrefix.None)>] Server of ParseResults<ServerArgs>
    | [<CliPrefix(CliPrefix.None)>] Client of ParseResults<ClientArgs>

    interface IArgParserTemplate with
        member this.Usage =
            match this with
            | Server _ -> "keep the roster and relay posts"
            | Client _ -> "join, post --count texts, receive everyone's posts"

type ServerSettings =
    { Requests: string; Broadcasts: string; Timeout: int; Heartbeat: int; Expiry: int
      Security: Security; Monitor: bool }

type ClientSettings =
    { Requests: string; Broadcasts: string; Timeout: int
      Name: string; Count: int; Clients: int; Keepalive: int; Retry: int; Pace: int
      Security: Security; Monitor: bool }

let serverSecurity (args: ParseResults<ServerArgs>) : Security =
    let chosen = args.TryPostProcessResult(ServerArgs.Security, mechanism) |> Option.defaultValue "null"
    let secret = args.TryPostProcessResult(ServerArgs.Curve_Secret, curveKey)
    let clients = args.TryPostProcessResult(Curve_Clients, curveKeys)
    // NetMQ has no PLAIN, but the command line is the same in every language.
    args.TryPostProcessResult(ServerArgs.Plain_User, credential) |> ignore
    args.TryPostProcessResult(ServerArgs.Plain_Password, credential) |> ignore
    netmqCan args chosen clients.IsSome
    { Mechanism = chosen
      CurveSecret = curveNeeds args chosen "--curve-secret" secret
      CurvePublic = None
      CurveServer = None }

let clientSecurity (args: ParseResults<ClientArgs>) : Security =
    let chosen = args.TryPostProcessResult(ClientArgs.Security, mechanism) |> Option.defaultValue "null"
    let secret = args.TryPostProcessResult(ClientArgs.Curve_Secret, curveKey)
    let ours = args.TryPostProcessResult(Curve_Public, curveKey)
    let server = args.TryPostProcessResult(Curve_Server, curveKey)
    args.TryPostProcessResult(ClientArgs.Plain_User, credential) |> ignore
    args.TryPostProcessResult(ClientArgs.Plain_Password, credential) |> ignore
    netmqCan args chosen false
    { Mechanism = chosen
      CurveSecret = curveNeeds args chosen "--curve-secret" secret
      CurvePublic = curveNeeds args chosen "--curve-public" ours
      CurveServer = curveNeeds args chosen "--curve-server" server }

let serverSettings (args: ParseResults<ServerArgs>) : ServerSettings =
    { Requests = args.GetResult(ServerArgs.Requests, "tcp://127.0.0.1:5555")
      Broadcasts = args.GetResult(ServerArgs.Broadcasts, "tcp://127.0.0.1:5556")
      Timeout = args.TryPostProcessResult(ServerArgs.Timeout, atLeast 0) |> Option.defaultValue 0
      Heartbeat = args.TryPostProcessResult(Heartbeat, atLeast 1) |> Option.defaultValue 100
      Expiry = args.TryPostProcessResult(Expiry, atLeast 1) |> Option.defaultValue 5000
      Security = serverSecurity args
      Monitor = args.TryPostProcessResult(ServerArgs.Monitor, onOff) |> Option.defaultValue false }

let clientSettings (args: ParseResults<ClientArgs>) : ClientSettings =
    { Requests = args.GetResult(ClientArgs.Requests, "tcp://127.0.0.1:5555")
      Broadcasts = args.GetResult(ClientArgs.Broadcasts, "tcp://127.0.0.1:5556")
      Timeout =
        args.TryPostProcessResult(ClientArgs.Timeout, atLeast 0) |> Option.defaultValue 30000
      Name = args.PostProcessResult(Name, name)
      Count = args.TryPostProcessResult(Count, atLeast 0) |> Option.defaultValue 5
      Clients = args.TryPostProcessResult(Clients, atLeast 1) |> Option.defaultValue 1
      Keepalive = args.TryPostProcessResult(Keepalive, atLeast 1) |> Option.defaultValue 1000
      Retry = args.TryPostProcessResult(Retry, atLeast 1) |> Option.defaultValue 2000
      Pace = args.TryPostProcessResult(Pace, atLeast 0) |> Option.defaultValue 0
      Security = clientSecurity args
      Monitor = args.TryPostProcessResult(ClientArgs.Monitor, onOff) |> Option.defaultValue false }

let postText (name: string) (number: int) = $"{name} #{number}: héllo wörld 🌍"

/// The number i of a text `<handle> #<i>: ...` (1 to 9 ASCII digits), or None.
let postNumber (handle: string) (text: string) =
    let prefix = $"{handle} #"
    let rest = if text.StartsWith(prefix, StringComparison.Ordinal) then text.Substring prefix.Length else ""
    let colon = rest.IndexOf ':'
    let digits = if colon < 0 then "" else rest.Substring(0, colon)
    if 1 <= digits.Length && digits.Length <= 9 && digits |> Seq.forall Char.IsAsciiDigit then Some(int digits)
    else None

// --- security (PROTOCOL.md, "Security") -----------------------------------------------------
// Both sockets of a role use the same mechanism. The options are read when a connection's
// handshake starts, so they are set before bind or connect. Under null there is nothing to set.

/// A CURVE server holds its own keypair (NetMQ derives the public half from the secret). Any client
/// that knows the server's public key gets in: NetMQ has no ZAP to narrow that down.
let secureServer (socket: NetMQSocket) (security: Security) =
    if security.Mechanism = "curve" then
        socket.Options.CurveServer <- true
        socket.Options.CurveCertificate <- NetMQCertificate.CreateFromSecretKey(security.CurveSecret.Value)

/// A CURVE client proves itself with its own keypair and trusts only the server whose public key
/// it was given: a server without the matching secret key fails the handshake.
let secureClient (socket: NetMQSocket) (security: Security) =
    if security.Mechanism = "curve" then
        socket.Options.CurveCertificate <-
            NetMQCertificate(security.CurveSecret.Value, security.CurvePublic.Value)
        socket.Options.CurveServerCertificate <- NetMQCertificate.FromPublicKey(security.CurveServer.Value)

// --- shared helpers --------------------------------------------------------------------------

/// The texts of the frames, or None when one of them is not UTF-8.
let tryDecode (frames: byte[] list) =
    try Some(frames |> List.map utf8.GetString) with :? ArgumentException -> None

/// Handles sort by their UTF-8 bytes: .NET compares UTF-16 code units, another order above U+FFFF.
let byUtf8 (a: string) (b: string) = Seq.compareWith compare (utf8.GetBytes a) (utf8.GetBytes b)

/// A broadcast, read: a roster (frame 0 empty: the server speaking), a post, or what is wrong with it.
type Broadcast =
    | Roster of handles: string list
    | Post of handle: string * text: string
    | Malformed of reason: string

/// Whether a frame is a handle: 1 to 32 bytes of UTF-8. A client checks every handle it is given
/// with it, in a post, a roster broadcast or a roster reply.
let isHandle (frame: byte[]) =
    1 <= frame.Length && frame.Length <= MaxHandle && (tryDecode [ frame ]).IsSome

let readBroadcast (frames: byte[] list) =
    match frames with
    | empty :: handles when empty.Length = 0 -> // order and repeats are the server's business
        if handles |> List.forall isHandle then Roster(handles |> List.map utf8.GetString)
        else Malformed $"a roster frame is not a handle (1 to {MaxHandle} bytes of UTF-8)"
    | [ handle; text ] when isHandle handle && 1 <= text.Length && text.Length <= MaxText
                            && (tryDecode [ text ]).IsSome ->
        Post(utf8.GetString handle, utf8.GetString text)
    | [ _; _ ] -> Malformed $"a post is a handle (1 to {MaxHandle} bytes) and a text (1 to {MaxText} bytes) of UTF-8"
    | _ -> Malformed $"a post has 2 frames, got {frames.Length}"

/// The roster of a reply, or Error (code, reason) for an error reply or a broken one: both fatal
/// for a client.
let checkReply (reply: byte[] list) =
    match reply with
    | [ empty; code ] when empty.Length = 0 ->
        // Lenient: it is only shown to people; at most 32 bytes of it, as every reason quotes a peer.
        let code = Text.Encoding.UTF8.GetString(code, 0, min code.Length 32)
        Error("rejected", $"the server rejected our request: {code}")
    | empty :: _ when empty.Length = 0 ->
        Error("malformed-reply", $"an error reply has 2 frames, got {reply.Length}")
    | _ when reply |> List.forall isHandle -> Ok(reply |> List.map utf8.GetString)
    | _ -> Error("malformed-reply", $"a roster frame is not a handle (1 to {MaxHandle} bytes of UTF-8)")

// --- server ----------------------------------------------------------------------------------

/// The first broken rule of a request, as (code, reason), or None when it is well formed.
let checkRequest (frames: byte[] list) =
    let notUtf8 (frame: byte[]) =
        try utf8.GetString frame |> ignore; None
        with :? Text.DecoderFallbackException as error -> Some error
    match frames with
    | [] | _ :: _ :: _ :: _ -> Some("frame-count", $"expected 1 or 2 frames, got {frames.Length}")
    | handle :: _ when handle.Length = 0 -> Some("empty-handle", "the handle frame is empty")
    | handle :: _ when handle.Length > MaxHandle ->
        Some("handle-too-long", $"the handle has {handle.Length} bytes, at most {MaxHandle}")
    | [ _; text ] when text.Length = 0 -> Some("empty-text", "the text frame is empty")
    | [ _; text ] when text.Length > MaxText ->
        Some("text-too-long", $"the text has {text.Length} bytes, at most {MaxText}")
    | _ ->
        frames
        |> List.tryPick notUtf8
        |> Option.map (fun error -> "invalid-utf8", $"not UTF-8: invalid byte at {error.Index}")

/// A well-formed post from a handle the server does not know: join first. After a restart, this is
/// how a posting client learns that the server has forgotten it.
let checkPost (frames: byte[] list) (roster: Dictionary<string, int64>) =
    match frames with
    | [ handle; _ ] when not (roster.ContainsKey(utf8.GetString handle)) ->
        Some("unknown-handle", "join with [handle] before posting")
    | _ -> None

let runServer (args: ServerSettings) =
    use stop = new StopSignal()
    let deadline = Deadline(args.Timeout)
    // REP answers each request exactly once, in order: the library keeps the lockstep for us.
    use requests = new ResponseSocket()
    requests.Options.Linger <- TimeSpan.Zero
    requests.Options.MaxMsgSize <- MaxMessage
    // PUB sends every broadcast to every subscriber whose filter matches; it never blocks, and it
    // drops for a subscriber that is not connected yet (slow joiner) or whose queue is full (HWM).
    use broadcasts = new PublisherSocket()
    broadcasts.Options.Linger <- TimeSpan.Zero
    broadcasts.Options.MaxMsgSize <- MaxMessage // PUB still decodes what subscribers send
    secureServer requests args.Security
    secureServer broadcasts args.Security
    use _ = SocketMonitor.watch requests "requests" args.Monitor // before the bind: `listening` too
    use _ = SocketMonitor.watch broadcasts "broadcasts" args.Monitor
    endpoint "bind" requests.Bind args.Requests
    endpoint "bind" broadcasts.Bind args.Broadcasts
    emit "ready" [ "requests", box requests.Options.LastEndpoint
                   "broadcasts", box broadcasts.Options.LastEndpoint
                   "security", box args.Security.Mechanism ]

    let roster = Dictionary<string, int64>() // handle -> last seen, monotonic ms
    let sortedRoster () = roster.Keys |> Seq.sortWith byUtf8 |> Seq.map utf8.GetBytes |> List.ofSeq
    let mutable accepted = 0
    let mutable rejected = 0
    let mutable nextBeat = nowMs ()

    // Frame 0 is empty: no handle is, so subscribers know the server itself is speaking.
    let broadcastRoster () = send broadcasts ([||] :: sortedRoster ())

    let serve (frames: byte[] list) =
        match checkRequest frames |> Option.orElseWith (fun () -> checkPost frames roster) with
        | Some(code, reason) ->
            rejected <- rejected + 1
            send requests [ [||]; utf8.GetBytes(code: string) ]
            emit "error" [ "code", box code; "reason", box reason ]
        | None ->
            let handle = utf8.GetString frames.Head
            let joined = not (roster.ContainsKey handle)
            roster[handle] <- nowMs ()
            match frames with
            | [ _; text ] ->
                send broadcasts frames // [handle, text], exactly as posted
                emit "posted" [ "handle", box handle; "text", box (utf8.GetString text) ]
            | _ -> ()
            accepted <- accepted + 1
            send requests (sortedRoster ())
            if joined then
                emit "joined" [ "handle", box handle ]
                broadcastRoster ()

    let heartbeat now =
        let silent = [ for KeyValue(h, seen) in roster do if now - seen > int64 args.Expiry then h ]
        for handle in silent do
            roster.Remove handle |> ignore
            emit "expired" [ "handle", box handle ]
        broadcastRoster ()
        nextBeat <- now + int64 args.Heartbeat

    while not stop.Raised do
        if deadline.Expired then
            raise (Failure("timeout", $"still serving after {args.Timeout} ms"))
        let waitMs = max 0L (nextBeat - nowMs ())
        // Poll instead of a blocking receive: the heartbeat, the deadline and the stop flag all get
        // their turn without a second thread. Nothing after all (a malformed request that REP
        // dropped) is just another turn of the loop.
        receiveWithin requests (Some(deadline.Cap waitMs)) |> Option.iter serve
        let now = nowMs ()
        if now >= nextBeat then heartbeat now

    emit "done" [ "requests", box accepted; "rejected", box rejected ]

// --- client ----------------------------------------------------------------------------------

type ChatClient(args: ClientSettings) =
    let me = utf8.GetBytes args.Name
    let deadline = Deadline(args.Timeout)

    /// A new SUB socket and its monitor, subscribed to everything and connected: at startup, and
    /// for each rejoin (a new SUB holds nothing of the server that forgot us). NetMQ's monitor has
    /// no handshake events, so under curve too the monitor is the `--monitor` one.
    let openBroadcasts () =
        let sub = new SubscriberSocket()
        sub.Options.Linger <- TimeSpan.Zero
        sub.Options.MaxMsgSize <- MaxMessage
        sub.Subscribe("") // a prefix filter on frame 0; "" lets posts and rosters through
        secureClient sub args.Security
        let monitor = SocketMonitor.watch sub "broadcasts" args.Monitor // before the connect
        endpoint "connect" sub.Connect args.Broadcasts
        sub, monitor
    // SUB first, so that its subscription starts travelling as early as possible.
    let mutable sub, subMonitor = openBroadcasts ()

    /// A new REQ socket and its monitor, connected. REQ enforces send, receive, send, receive...: one
    /// request in flight at a time, and no second send before the reply. So when a reply is lost,
    /// Lazy Pirate throws the socket away and comes here for a new one.
    let openRequests () =
        let req = new RequestSocket()
        req.Options.Linger <- TimeSpan.Zero // closing it drops a request still queued for a dead server
        req.Options.MaxMsgSize <- MaxMessage
        secureClient req args.Security
        let monitor = SocketMonitor.watch req "requests" args.Monitor
        endpoint "connect" req.Connect args.Requests
        req, monitor
    let mutable req, reqMonitor = openRequests ()
    let mutable roster: string list = []
    let mutable peers: string list = [] // the roster of step 4: whose posts we wait for, who must rejoin first
    let last = Dictionary<string, int>() // handle -> the highest post number received from it
    let texts = Dictionary<string, HashSet<string>>() // handle -> the different texts received from it
    let mutable received = 0
    let mutable listed = false // a roster broadcast listed us since our last join
    let mutable forgotten = false // the server forgot us (it restarted): rejoin before anything else
    let mutable lastRequest = nowMs ()

    let lastFrom peer =
        match last.TryGetValue peer with
        | true, n -> n
        | _ -> 0

    let textsFrom peer =
        match texts.TryGetValue peer with
        | true, set -> set.Count
        | _ -> 0

    /// --count different texts from `peer`, or its post numbered --count (posts before it may have
    /// been lost with a server that died). A person's post, through the desk's page, is any text.
    let heardAll peer = textsFrom peer >= args.Count || lastFrom peer >= args.Count

    member _.UpdateRoster(handles: string list) =
        if handles <> roster then
            roster <- handles
            emit "roster" [ "handles", box handles ]

    /// The reply, or None once --retry ms passed without one; `no-reply` at the deadline.
    member _.WaitForReply() =
        let until = nowMs () + int64 args.Retry
        let mutable reply = None
        while reply.IsNone && nowMs () < until do
            if deadline.Expired then
                raise (Failure("no-reply", $"no reply from the server within {args.Timeout} ms"))
            // REQ may drop a reply it cannot match inside the receive: back to the poll then.
            reply <- receiveWithin req (Some(deadline.Cap(until - nowMs ())))
        reply

    /// One round trip, Lazy Pirate style: the roster of the reply, or None when the server answered
    /// a post with `unknown-handle` (rejoin, then send it again).
    member this.Request(frames: byte[] list) =
        send req frames
        let mutable reply = this.WaitForReply()
        while reply.IsNone do
            // The reply is lost, perhaps with the server. Close the REQ (linger 0 drops what it still
            // holds; its monitor stops first) and send the same request again on a new one.
            emit "retried" [ "text", box (match frames with [ _; text ] -> utf8.GetString text | _ -> "") ]
            reqMonitor.Dispose()
            req.Dispose()
            let next, monitor = openRequests ()
            req <- next
            reqMonitor <- monitor
            send req frames
            reply <- this.WaitForReply()
        lastRequest <- nowMs ()
        match frames, reply.Value with
        | [ _; _ ], [ empty; code ] when empty.Length = 0 && code = "unknown-handle"B ->
            forgotten <- true
            None
        | _, reply ->
            match checkReply reply with
            | Error(code, reason) -> raise (Failure(code, reason))
            | Ok handles ->
                this.UpdateRoster handles
                Some handles

    member this.Join() =
        listed <- false
        this.Request [ me ] |> Option.get // only a post can be answered `unknown-handle`

    member this.OnBroadcast(frames: byte[] list) =
        match readBroadcast frames with
        | Roster handles ->
            this.UpdateRoster handles
            if List.contains args.Name handles then
                listed <- true
            elif listed then // after one with us, a roster without us: the server has forgotten us
                forgotten <- true
                listed <- false
        | Post(handle, text) -> this.OnPost(handle, text)
        | Malformed reason -> emit "error" [ "code", box "malformed-broadcast"; "reason", box reason ]

    member _.OnPost(handle: string, text: string) =
        received <- received + 1
        match texts.TryGetValue handle with
        | true, set -> set.Add text |> ignore // a duplicate adds nothing
        | _ -> texts[handle] <- HashSet<string>([ text ], StringComparer.Ordinal)
        emit "received" [ "handle", box handle; "text", box text ]
        match postNumber handle text with
        | Some number ->
            let before = lastFrom handle
            for missing in before + 1 .. min number (args.Count + 1) - 1 do // bounded by --count
                emit "missed" [ "handle", box handle; "number", box missing ] // lost with a server that died
            last[handle] <- max before number
        | None -> ()

    /// Handle one broadcast, or send a keep-alive when one is due, whichever comes first; or rejoin,
    /// if the server has forgotten us. Returns by `until` (monotonic ms) if given.
    member this.Serve(until: int64 option) =
        if forgotten then
            this.Rejoin()
        else
            if deadline.Expired then
                raise (Failure("timeout", $"not done after {args.Timeout} ms"))
            let due = lastRequest + int64 args.Keepalive
            let waitMs = max 0L (min due (defaultArg until due) - nowMs ())
            match receiveWithin sub (Some(deadline.Cap waitMs)) with
            | Some frames -> this.OnBroadcast frames
            | None when nowMs () >= due ->
                this.Request [ me ] |> ignore // keep-alive: silent handles expire from the roster
            | None -> ()

    /// The first broadcast on the SUB (the slow joiner: our subscription has reached the server);
    /// `timeout` at the deadline. A refused handshake looks the same: NetMQ's monitor has no
    /// handshake events, so a client with the wrong keys hears nothing and ends with `timeout`
    /// (libzmq's clients say `refused`).
    member _.WaitForFirstBroadcast() =
        let mutable frames = None
        while frames.IsNone do
            frames <- receiveWithin sub (Some(deadline.Cap(int64 args.Keepalive)))
            if frames.IsNone && deadline.Expired then
                raise (Failure("timeout", "no broadcast from the server"))
        frames.Value

    /// The server forgot us: start over as a newcomer (PROTOCOL.md, "Restarts").
    member this.Rejoin() =
        // What the old SUB already holds came from the old server: take it, then throw the socket
        // away. Which of its broadcasts are older than our join, nothing tells; a new SUB holds none.
        let mutable held = receiveIfReady sub
        while held.IsSome do
            this.OnBroadcast held.Value
            held <- receiveIfReady sub
        subMonitor.Dispose() // the monitor first, while its socket is still open
        sub.Dispose()
        let next, monitor = openBroadcasts ()
        sub <- next
        subMonitor <- monitor
        // Slow joiner, again: the new SUB's first broadcast comes from the server that forgot us,
        // once our subscription has reached it. Until then, no request, not even a keep-alive.
        this.OnBroadcast(this.WaitForFirstBroadcast())
        forgotten <- false
        emit "rejoined" [ "handles", box (this.Join()) ]
        // Everyone listens before anyone talks, again: every peer rejoins the same way.
        while not (peers |> List.forall (fun peer -> List.contains peer roster)) do
            this.Serve None

    member this.Run() =
        // Slow joiner: until a first broadcast arrives, our subscription may not have reached the
        // server and posts would be dropped for us. The server broadcasts at least every heartbeat.
        this.OnBroadcast(this.WaitForFirstBroadcast())
        this.Join() |> ignore
        emit "ready" [ "handle", box args.Name; "security", box args.Security.Mechanism ]

        // Everyone listens before anyone talks: wait for --clients handles, all subscribed.
        while roster.Length < args.Clients do
            this.Serve None
        peers <- roster
        log $"{args.Name}: {peers.Length} peers, posting {args.Count} texts"

        let mutable number = 1
        while number <= args.Count do
            let text = postText args.Name number
            match this.Request [ me; utf8.GetBytes text ] with
            | None -> this.Rejoin() // unknown-handle: rejoin, then the same post again
            | Some replyRoster ->
                emit "sent" [ "text", box text; "roster", box replyRoster ]
                number <- number + 1
                let until = nowMs () + int64 args.Pace // --pace: broadcasts are served meanwhile
                while nowMs () < until do
                    this.Serve(Some until)

        while not (peers |> List.forall heardAll) do
            this.Serve None
        emit "done" [ "sent", box args.Count; "received", box received ]

    interface IDisposable with
        member _.Dispose() =
            subMonitor.Dispose() // the monitors first, while their sockets are still open
            reqMonitor.Dispose()
            sub.Dispose()
            req.Dispose()

let runClient (args: ClientSettings) =
    use client = new ChatClient(args)
    client.Run()

/// Validate the command line of a chat role (Argu raises on a bad value) and return its run.
let role (args: ParseResults<ChatArgs>) : unit -> unit =
    match args.GetSubCommand() with
    | Server server ->
        let settings = serverSettings server
        fun () -> runServer settings
    | Client client ->
        let settings = clientSettings client
        fun () -> runClient settings
