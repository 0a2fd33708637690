/// The desk's web page: HTTP/1.1 over a ZMQ_STREAM socket (examples/desk/PROTOCOL.md, "The web page").
///
/// STREAM is the socket for a peer that does not speak ZeroMQ: raw TCP, no ZMTP, no framing. Every
/// message is [identity, bytes]: the identity names one TCP connection, the bytes are what one read
/// returned (a request may come in pieces, or with more behind it). Sending [identity, bytes] writes
/// the bytes to that connection; [identity, ""] closes it. The main thread owns this socket, as it
/// owns stdout: the page is one more reader of the lines the desk writes.
module Btb.Web

open System
open System.Collections.Generic
open System.IO
open System.Reflection
open System.Text
open System.Text.RegularExpressions
open NetMQ
open NetMQ.Sockets
open Btb.Contract

// --- the page --------------------------------------------------------------------------------

/// examples/desk/page.html, built into the assembly (btb.fsproj's EmbeddedResource): read once, on
/// the first GET /, and served byte for byte.
let page =
    lazy
        (use resource = Assembly.GetExecutingAssembly().GetManifestResourceStream "page.html"
         use copy = new MemoryStream()
         resource.CopyTo copy
         copy.ToArray())

// --- the HTTP subset -------------------------------------------------------------------------

let MaxHead = 8192 // bytes of request line and headers, up to and including the blank line
let MaxBody = 4096 // bytes of a POST's body
let RequestMs = 5000L // for a whole request, from its first message
let CloseMs = 1000L // after a response, for the client to close before the desk does
let MaxConnections = 256
let MaxLines = 1000 // lines kept for the replay: start-up, and the last others
let MaxKeys = 256 // latest lines kept for the replay, one per key
let Batch = 100 // messages read per turn: the pipes get theirs

/// The targets and the one method each takes.
let routes = dict [ "/", "GET"; "/events", "GET"; "/follow", "POST"; "/forget", "POST"; "/chat", "POST"; "/value", "POST" ]

let reasons =
    dict [ 200, "OK"; 204, "No Content"; 400, "Bad Request"; 404, "Not Found"; 405, "Method Not Allowed"
           408, "Request Timeout"; 409, "Conflict"; 411, "Length Required"; 413, "Content Too Large"
           431, "Request Header Fields Too Large"; 501, "Not Implemented"; 505, "HTTP Version Not Supported" ]

/// A response's head: every one says Cache-Control: no-store and Connection: close (one request
/// per connection); a 405 says which method its target takes.
let head (status: int) (fields: (string * string) list) (allow: string option) =
    let lines =
        [ yield $"HTTP/1.1 {status} {reasons[status]}"
          for name, value in fields @ [ "Cache-Control", "no-store"; "Connection", "close" ] -> $"{name}: {value}"
          for method in Option.toList allow -> $"Allow: {method}" ]
    Encoding.ASCII.GetBytes(String.Join("\r\n", lines) + "\r\n\r\n")

/// A whole response with a body.
let response (status: int) (contentType: string) (body: byte[]) (allow: string option) =
    Array.append (head status [ "Content-Type", contentType; "Content-Length", string body.Length ] allow) body

/// An error: one line of text saying why.
let failure (status: int) (why: string) (allow: string option) =
    response status "text/plain; charset=utf-8" (utf8.GetBytes(why + "\n")) allow

/// A request read whole, or why it cannot be answered: (status, why, Allow).
type Parsed =
    | Incomplete
    | Bad of status: int * why: string * allow: string option
    | Request of verb: string * target: string * body: string

let private version = Regex(@"\AHTTP/[0-9]\.[0-9]\z")
let private printable (text: string) = text |> Seq.forall (fun c -> c > ' ' && c < '\u007f')
let private isDigits (text: string) = text <> "" && text |> Seq.forall Char.IsAsciiDigit

/// Where the head ends (after its CRLF CRLF) in the first `length` bytes, if within MaxHead.
let private headEnd (bytes: byte[]) (length: int) =
    let span = ReadOnlySpan(bytes, 0, min length MaxHead)
    match span.IndexOf(ReadOnlySpan("\r\n\r\n"B)) with
    | -1 -> None
    | at -> Some(at + 4)

/// Read what a connection has sent so far (`length` bytes of `bytes`) as the subset allows.
let parse (bytes: byte[]) (length: int) : Parsed =
    let bad status why = Bad(status, why, None)
    match headEnd bytes length with
    | None when length >= MaxHead -> bad 431 $"the request line and headers exceed {MaxHead} bytes"
    | None -> Incomplete
    | Some fin ->
        // Latin-1: one char per byte, so every byte can be looked at, none can fail to decode.
        let lines = Encoding.Latin1.GetString(bytes, 0, fin - 4).Split "\r\n"
        let parts = lines[0].Split ' '
        if parts.Length <> 3 || not (parts |> Array.forall (fun part -> part <> "" && printable part)) then
            bad 400 "the request line is not METHOD SP TARGET SP VERSION"
        elif parts[2] <> "HTTP/1.1" && parts[2] <> "HTTP/1.0" then
            if version.IsMatch parts[2] then bad 505 "HTTP/1.1 or HTTP/1.0 only" else bad 400 "not an HTTP version"
        else
            let verb, target = parts[0], parts[1]
            let mutable problem = None
            let mutable contentLength: int64 option = None
            let mutable chunked = false
            for line in lines[1..] do
                match line.IndexOf ':' with
                | -1 -> problem <- Some "a header line without ':'"
                | colon ->
                    let value = line[colon + 1 ..].Trim([| ' '; '\t' |])
                    match line[.. colon - 1].Trim().ToLowerInvariant() with
                    | "content-length" when not (isDigits value) -> problem <- Some "Content-Length is not decimal digits"
                    | "content-length" ->
                        // Any number of digits: more than 9 (after the zeros) is too large anyway.
                        let digits = value.TrimStart '0'
                        let n = if digits.Length > 9 then Int64.MaxValue elif digits = "" then 0L else int64 digits
                        if contentLength.IsSome && contentLength <> Some n then problem <- Some "two different Content-Lengths"
                        contentLength <- Some n
                    | "transfer-encoding" -> chunked <- true
                    | _ -> ()
            match problem, contentLength with
            | Some why, _ -> bad 400 why
            | None, _ when chunked -> bad 501 "no Transfer-Encoding: send a Content-Length"
            | None, Some n when n > int64 MaxBody -> bad 413 $"a body is at most {MaxBody} bytes"
            | None, _ when not (routes.ContainsKey target) -> bad 404 $"no page {target}"
            | None, _ when routes[target] <> verb -> Bad(405, $"{target} takes {routes[target]}", Some routes[target])
            | None, None when verb = "POST" -> bad 411 "a POST needs a Content-Length"
            | None, _ when verb = "GET" -> Request(verb, target, "") // a GET's body, if any, is not read
            | None, Some n when int64 (length - fin) < n -> Incomplete // the body is still coming
            | None, n ->
                let size = int (Option.defaultValue 0L n)
                try Request(verb, target, utf8.GetString(bytes, fin, size))
                with :? ArgumentException -> bad 400 "the body is not UTF-8"

// --- connections -----------------------------------------------------------------------------

/// Where a connection is. The desk never closes one right after a response: a close made by NetMQ
/// on .NET is a TCP reset (.NET disposes the socket with NetMQ's receive still pending, and makes
/// that close abortive), which throws away what the kernel has not sent yet. So the client closes
/// (Connection: close), or the desk does at the deadline, long after the response has gone out.
type Phase =
    | Reading // its request is coming
    | Answered // its response went out: the client closes, or the desk does at the deadline
    | Streaming // an event stream: every line the desk writes, with no deadline
    | Closing // a slow stream (dropped), or one whose close found no room: closed once its queue takes it

type Connection =
    { Id: byte[]; Buffer: MemoryStream; mutable Deadline: int64; mutable Phase: Phase }

type Sent =
    | Sent
    | Full // its queue is at the high-water mark: nothing was sent
    | Gone // the peer has closed: the socket no longer knows the identity

/// What `on_command` answers for a POST: 204, or 400/409 and why.
type Answer = int * string

// --- the server ------------------------------------------------------------------------------

/// The page's STREAM socket, made and used by the main thread only, and what it knows of each
/// connection and of the lines to replay.
type Web(address: string, monitor: bool) =
    let socket = new StreamSocket()
    let watch = SocketMonitor.watch socket "http" monitor // before the bind: `listening` too
    do
        // Linger 0: at close, an open event stream has nothing worth waiting for.
        socket.Options.Linger <- TimeSpan.Zero
        // 1000 messages per connection, set on purpose: the most one slow reader can hold. Past it
        // a send is refused (non-blocking), and the desk drops that reader rather than wait.
        socket.Options.SendHighWatermark <- 1000
        endpoint "bind" socket.Bind address // a failed bind: `error` bind, exit 1
    let connections = Dictionary<string, Connection>() // by identity, as Latin-1: one char per byte
    let startup = ResizeArray<string>() // every line up to the desk's ready (a few; MaxLines at most)
    let recent = Queue<string>() // the last MaxLines lines since
    let latest = OrderedDictionary<string, string>() // key -> its latest line, MaxKeys keys at most
    let mutable serving = false

    let forget (connection: Connection) = connections.Remove(Encoding.Latin1.GetString connection.Id) |> ignore

    /// [identity, bytes], never blocking: a blocking send to a slow reader would freeze the desk.
    /// NetMQ refuses the identity frame when the connection's queue is full (TrySend: false), and
    /// throws when the connection is gone; once the identity frame is in, the bytes go too.
    let send (id: byte[]) (bytes: byte[]) =
        try
            if socket.TrySendFrame(TimeSpan.Zero, id, true) then
                socket.SendFrame bytes
                Sent
            else Full
        with :? HostUnreachableException -> Gone

    /// [identity, ""] closes the connection, once its queue takes it.
    let close (connection: Connection) =
        match send connection.Id [||] with
        | Full -> connection.Phase <- Closing // tried again at each expire
        | Sent | Gone -> forget connection

    /// Room for one more connection when MaxConnections are known. libzmq says when a client closes;
    /// NetMQ does not, so an answered connection stays known until its deadline although its client
    /// has most likely gone (every response says Connection: close). The one answered longest ago
    /// is closed now (or found gone); only when none is answered is the newcomer refused.
    let makeRoom () =
        let answered = [ for connection in connections.Values do if connection.Phase = Answered then connection ]
        if not answered.IsEmpty then close (answered |> List.minBy (fun connection -> connection.Deadline))
        connections.Count < MaxConnections

    /// A response is sent once; then the client has CloseMs to close.
    let answer (now: int64) (connection: Connection) (bytes: byte[]) =
        connection.Buffer.SetLength 0L
        connection.Buffer.Capacity <- 0 // the request is done with: no memory held for it
        match send connection.Id bytes with
        | Gone -> forget connection
        | Sent | Full ->
            connection.Phase <- Answered
            connection.Deadline <- now + CloseMs

    let event (line: string) = $"data: {line}\n\n"

    /// A new event stream: its head and the replay, in one message.
    let stream (connection: Connection) =
        let replay = StringBuilder()
        for line in Seq.concat [ startup :> seq<string>; recent; latest.Values ] do
            replay.Append(event line) |> ignore
        let bytes = Array.append (head 200 [ "Content-Type", "text/event-stream" ] None) (utf8.GetBytes(replay.ToString()))
        match send connection.Id bytes with
        | Sent -> connection.Phase <- Streaming
        | Full -> connection.Phase <- Closing
        | Gone -> forget connection

    /// A whole request: the page, the event stream, or a command for the desk.
    let serve (now: int64) (connection: Connection) (onCommand: string -> string -> Answer) =
        let bytes = connection.Buffer.GetBuffer()
        match parse bytes (int connection.Buffer.Length) with
        | Incomplete -> ()
        | Bad(status, why, allow) -> answer now connection (failure status why allow)
        | Request(_, "/", _) -> answer now connection (response 200 "text/html; charset=utf-8" page.Value None)
        | Request(_, "/events", _) -> stream connection
        | Request(_, target, body) ->
            match onCommand target body with
            | 204, _ -> answer now connection (head 204 [] None)
            | status, why -> answer now connection (failure status why None)

    member _.Endpoint = socket.Options.LastEndpoint
    member _.Socket = socket

    /// The start-up lines are all in (the desk's ready was the last): later lines go to the ring
    /// of recent lines or to the map of latest lines.
    member _.Serving() = serving <- true

    /// Read what the connections sent: at most Batch messages, each without waiting (a poll's
    /// PollIn is a hint). `onCommand target body` is the desk's: it checks the body, sends the pipe
    /// command, and answers 204, or 400/409 and why.
    member _.Receive(now: int64, onCommand: string -> string -> Answer) =
        let mutable turn = 0
        while turn < Batch do
            turn <- turn + 1
            match receiveIfReady socket with
            | Some [ id; data ] when id.Length >= 1 && id.Length <= 256 ->
                let key = Encoding.Latin1.GetString id
                match connections.TryGetValue key with
                | true, connection when data.Length = 0 -> forget connection // libzmq: the peer closed
                | true, connection when connection.Phase = Reading ->
                    // Capped at the largest request: a head of MaxHead and a body of MaxBody. What
                    // comes after a request is ignored.
                    let room = MaxHead + MaxBody - int connection.Buffer.Length
                    connection.Buffer.Write(data, 0, min room data.Length)
                    serve now connection onCommand
                | true, _ -> () // after its request: ignored
                | false, _ when connections.Count >= MaxConnections && not (makeRoom ()) ->
                    send id [||] |> ignore // one too many: closed at once, unanswered
                | false, _ ->
                    // The desk learns of a connection at its first message: libzmq's empty one at
                    // connect, NetMQ's first data (NetMQ says nothing at connect or disconnect).
                    let connection = { Id = id; Buffer = new MemoryStream(); Deadline = now + RequestMs; Phase = Reading }
                    connections[key] <- connection
                    connection.Buffer.Write(data, 0, min (MaxHead + MaxBody) data.Length)
                    if data.Length > 0 then serve now connection onCommand
            | Some _ -> () // STREAM delivers [identity, bytes] only
            | None -> turn <- Batch

    /// A line the desk wrote (or `progress`): kept for the replay, and sent to every event stream.
    /// `key` (`tick SYMBOL`, `applied KEY`, `progress`): only its latest line is replayed.
    member _.Publish(line: string, key: string option) =
        match key with
        | _ when not serving && startup.Count < MaxLines -> startup.Add line
        | Some key when latest.Count < MaxKeys || latest.ContainsKey key -> latest[key] <- line
        | Some _ -> () // sent live, not replayed
        | None ->
            recent.Enqueue line
            if recent.Count > MaxLines then recent.Dequeue() |> ignore
        let streams = [ for connection in connections.Values do if connection.Phase = Streaming then connection ]
        if not streams.IsEmpty then
            let bytes = utf8.GetBytes(event line)
            for connection in streams do
                match send connection.Id bytes with
                | Sent -> ()
                | Full -> connection.Phase <- Closing // a slow reader: this line and every later one dropped
                | Gone -> forget connection

    /// The deadlines: a request that is not whole in RequestMs (408 if part of one came), a client
    /// that has not closed CloseMs after its response; and the close of the slow streams.
    member _.Expire(now: int64) =
        for connection in List.ofSeq connections.Values do
            match connection.Phase with
            | Reading when now >= connection.Deadline ->
                if connection.Buffer.Length > 0L then
                    answer now connection (failure 408 $"the request was not whole after {RequestMs} ms" None)
                else close connection
            | Answered when now >= connection.Deadline -> close connection
            | Closing -> close connection
            | _ -> ()

    member _.Close() =
        connections.Clear()
        watch.Dispose()
        socket.Dispose()

    interface IDisposable with
        member this.Dispose() = this.Close()
