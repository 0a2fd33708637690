/// chat: a roster server over REQ/REP with a PUB broadcast channel (examples/chat/PROTOCOL.md).
module Btb.Chat

open System
open System.Collections.Generic
open Argu
open NetMQ
open NetMQ.Sockets
open Btb.Contract
open Btb.Security

let MaxHandle = MaxName // bytes of UTF-8 (the contract's MaxName)
let MaxText = 4096 // bytes of UTF-8
/// [max size] ZMQ_MAXMSGSIZE on all four sockets, set before bind or connect: NetMQ drops a bigger
/// frame together with the sender's connection, and it bounds subscriptions too, so no peer can make
/// a role allocate without bound. The largest legal frame is a 4096-byte text; the margin lets a
/// too-long text still reach the server's own `text-too-long` rule, and leaves room for CURVE's
/// per-frame overhead.
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
      Security: Settings; Monitor: bool }

type ClientSettings =
    { Requests: string; Broadcasts: string; Timeout: int
      Name: string; Count: int; Clients: int; Keepalive: int; Retry: int; Pace: int
      Security: Settings; Monitor: bool }

/// The security flags (Security.fs checks each value), as the launch contract lists them.
let serverSecurity (args: ParseResults<ServerArgs>) : Settings =
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

let clientSecurity (args: ParseResults<ClientArgs>) : Settings =
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

// --- shared helpers --------------------------------------------------------------------------

/// The texts of the frames, or None when one of them is not UTF-8.
let tryDecode (frames: byte[] list) =
    try Some(frames |> List.map utf8.GetString) with :? ArgumentException -> None

/// A broadcast, read: a roster (frame 0 empty: the server speaking), a post, or what is wrong with it.
type Broadcast =
    | Roster of handles: string list
    | Post of handle: string * text: string
    | Malformed of reason: string

/// Whether a frame is a handle: 1 to 32 bytes of UTF-8. A client checks every handle it is given
/// with it, in a post, a roster broadcast or a roster reply.
let isHandle (frame: byte[]) =
    1 <= frame.Length && frame.Length <= MaxHandle && (tryDecode [ frame ]).IsSome

/// A broadcast checked against PROTOCOL.md's broadcast table, whatever its frame count.
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

/// The roster of a reply, or Error (code, reason) for an error reply (`rejected`) or one that breaks
/// the reply table (`malformed-reply`): both fatal for a client.
let replyRoster (reply: byte[] list) =
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
    // [multipart] A request arrives whole or not at all, every frame or none; but how many frames
    // it has is the peer's choice: the count is checked first, never assumed.
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

/// Handles sort by their bytes, unsigned and lexicographic, a shorter prefix first (PROTOCOL.md,
/// "Encodings and limits"). The roster is keyed by the handle's UTF-8 bytes, never by a .NET string:
/// strings compare UTF-16 code units, another order above U+FFFF.
type ByBytes() =
    interface IComparer<byte[]> with
        member _.Compare(a, b) = MemoryExtensions.SequenceCompareTo(ReadOnlySpan a, ReadOnlySpan b)

/// A well-formed post from a handle the server does not know: join first. After a restart, this is
/// how a posting client learns that the server has forgotten it.
let checkPost (frames: byte[] list) (roster: SortedDictionary<byte[], int64>) =
    match frames with
    | [ handle; _ ] when not (roster.ContainsKey handle) -> Some("unknown-handle", "join with [handle] before posting")
    | _ -> None

let runServer (args: ServerSettings) =
    use stop = new StopSignal()
    let deadline = Deadline(args.Timeout)
    // [REP] Answers each request exactly once, in order: it takes one request, the reply goes back
    // to the client that sent it (the library keeps the envelope), and only then comes the next.
    use requests = new ResponseSocket()
    // [linger] 0 on both sockets: closing drops a reply or a broadcast still queued for a client
    // that is gone, so the server's exit never waits for a dead peer. Nothing queued is owed.
    requests.Options.Linger <- TimeSpan.Zero
    requests.Options.MaxMsgSize <- MaxMessage
    // [PUB] Sends every broadcast to every subscriber whose filter matches frame 0; it never blocks,
    // and it drops for a subscriber that is not connected yet (the slow joiner) or is past its HWM.
    use broadcasts = new PublisherSocket()
    broadcasts.Options.Linger <- TimeSpan.Zero
    broadcasts.Options.MaxMsgSize <- MaxMessage // PUB still decodes what subscribers send
    // [HWM] Left at the default, 1000 messages queued per subscriber: a client that stops reading
    // loses broadcasts there (PUB drops at the mark), and the server never waits for it.
    secureServer requests args.Security
    secureServer broadcasts args.Security
    use _ = SocketMonitor.watch requests "requests" args.Monitor // before the bind: `listening` too
    use _ = SocketMonitor.watch broadcasts "broadcasts" args.Monitor
    endpoint "bind" requests.Bind args.Requests
    endpoint "bind" broadcasts.Bind args.Broadcasts
    emit "ready" [ "requests", box requests.Options.LastEndpoint
                   "broadcasts", box broadcasts.Options.LastEndpoint
                   "security", box args.Security.Mechanism ]

    // The roster: each handle's bytes -> when it was last heard from, in monotonic ms; sorted by bytes.
    let roster = SortedDictionary<byte[], int64>(ByBytes())
    let mutable accepted = 0
    let mutable rejected = 0
    let mutable nextBeat = nowMs ()

    // Frame 0 is empty: no handle is, so subscribers know the server itself is speaking.
    let broadcastRoster () = send broadcasts ([||] :: List.ofSeq roster.Keys)

    /// One request, checked; PROTOCOL.md's order: the post's broadcast and `posted`, the reply, then
    /// a new handle's `joined` and roster broadcast. A rejected request: its error reply, then `error`.
    let onRequest (frames: byte[] list) =
        match checkRequest frames |> Option.orElseWith (fun () -> checkPost frames roster) with
        | Some(code, reason) ->
            rejected <- rejected + 1
            send requests [ [||]; utf8.GetBytes(code: string) ]
            emit "error" [ "code", box code; "reason", box reason ]
        | None ->
            let handle = frames.Head
            let joined = not (roster.ContainsKey handle)
            roster[handle] <- nowMs ()
            match frames with
            | [ _; text ] ->
                send broadcasts frames // [handle, text], exactly as posted
                emit "posted" [ "handle", box (utf8.GetString handle); "text", box (utf8.GetString text) ]
            | _ -> ()
            accepted <- accepted + 1
            send requests (List.ofSeq roster.Keys)
            if joined then
                emit "joined" [ "handle", box (utf8.GetString handle) ]
                broadcastRoster ()

    let heartbeat now =
        let silent = [ for KeyValue(handle, seen) in roster do if now - seen > int64 args.Expiry then handle ]
        for handle in silent do
            roster.Remove handle |> ignore
            emit "expired" [ "handle", box (utf8.GetString handle) ]
        broadcastRoster ()
        nextBeat <- now + int64 args.Heartbeat

    // [poll] One loop, five steps (examples/README.md, "One loop shape"): the stop flag and the
    // deadline; the wait, up to the next heartbeat; a poll of every socket the server reads (REP
    // alone: NetMQ has no ZAP handler, its monitors run on threads of their own, and PUB only
    // sends); a receive that never waits, since POLLIN is a hint (REP drops a request without its
    // delimiter inside the receive); then the heartbeat. No signal interrupts the poll (.NET has no
    // EINTR): the flag is seen at the next turn, within one heartbeat.
    while not stop.Raised do
        if deadline.Expired then
            raise (Failure("timeout", $"still serving after {args.Timeout} ms"))
        let waitMs = deadline.Cap(max 0L (nextBeat - nowMs ()))
        let ready = poll [ requests ] waitMs
        if ready.Has requests then
            receiveIfReady requests |> Option.iter onRequest // None: REP dropped it, nothing after all
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
        // [SUB] A prefix filter on frame 0, set before the connect so that it travels with the
        // connection; "" lets posts and rosters through. A SUB receives nothing it did not subscribe to.
        sub.Subscribe("")
        secureClient sub args.Security
        let monitor = SocketMonitor.watch sub "broadcasts" args.Monitor // before the connect
        endpoint "connect" sub.Connect args.Broadcasts
        sub, monitor
    // SUB first, created and connected, so that its subscription starts travelling as early as possible.
    let mutable sub, subMonitor = openBroadcasts ()

    // [REQ] Strict lockstep: send, receive, send, receive... One request in flight, and no second
    // send before the reply. So when a reply is lost, Lazy Pirate throws the socket away and comes
    // here for a new one.
    /// A new REQ socket and its monitor, connected.
    let openRequests () =
        let req = new RequestSocket()
        // [linger] 0: closing the REQ drops a request still queued for a dead server (Lazy Pirate
        // resends it on a new socket), and the client's exit never waits for one.
        req.Options.Linger <- TimeSpan.Zero
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
            let ready = poll [ req ] (deadline.Cap(until - nowMs ()))
            if ready.Has req then
                reply <- receiveIfReady req // None: REQ dropped a reply it cannot match; back to the poll
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
            match replyRoster reply with
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

    // [poll] The loop's five steps: the deadline; the wait, up to the next keep-alive (or `until`);
    // the poll of the SUB, the one socket the client reads between requests (REQ is polled in
    // WaitForReply, while its one request is in flight); a receive that never waits (POLLIN is a
    // hint); then the keep-alive timer. .NET has no EINTR: no signal cuts the poll short.
    /// One turn of the client's loop: handle a broadcast if one comes, then send a keep-alive if one
    /// is due; or rejoin, if the server has forgotten us. Returns by `until` (monotonic ms) if given.
    member this.Serve(until: int64 option) =
        if forgotten then
            this.Rejoin()
        else
            if deadline.Expired then
                raise (Failure("timeout", $"not done after {args.Timeout} ms"))
            let due = lastRequest + int64 args.Keepalive
            let waitMs = max 0L (min due (defaultArg until due) - nowMs ())
            let ready = poll [ sub ] (deadline.Cap waitMs)
            if ready.Has sub then
                receiveIfReady sub |> Option.iter this.OnBroadcast
            // Not once forgotten: a keep-alive would join us to the new server without the slow
            // joiner's wait of the rejoin.
            if not forgotten && nowMs () >= due then
                this.Request [ me ] |> ignore // keep-alive: silent handles expire from the roster

    // [slow joiner] A SUB hears only what is published after its subscription has reached the
    // publisher, some time after the connect returns. The server broadcasts a roster at least every
    // heartbeat, so the first broadcast of any kind says that the subscription is live: from then
    // on no post can be missed, and only then does the client join.
    /// The first broadcast on the SUB; `timeout` at the deadline. A refused handshake looks the same:
    /// NetMQ's monitor has no handshake events, so a client with the wrong keys hears nothing and
    /// ends with `timeout` (libzmq's clients say `refused`).
    member _.WaitForFirstBroadcast() =
        let mutable frames = None
        while frames.IsNone do
            if deadline.Expired then
                raise (Failure("timeout", "no broadcast from the server"))
            let ready = poll [ sub ] (deadline.Cap(int64 args.Keepalive))
            if ready.Has sub then
                frames <- receiveIfReady sub
        frames.Value

    /// The server forgot us: start over as a newcomer (PROTOCOL.md, "Restarts").
    member this.Rejoin() =
        // What the old SUB already holds came from the old server: take it, then throw the socket
        // away. Which of its broadcasts are older than our join, nothing tells; a new SUB holds none.
        // A drain on purpose (PROTOCOL.md, "Restarts"), bounded by what the SUB has queued (its HWM).
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
        // The slow joiner: until a first broadcast arrives, our subscription may not have reached
        // the server, and posts would be dropped for us.
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
            | Some handles ->
                emit "sent" [ "text", box text; "roster", box handles ]
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
