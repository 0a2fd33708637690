//! The desk's web page: HTTP/1.1 over a ZMQ_STREAM socket (examples/desk/PROTOCOL.md, "The web page").
//!
//! STREAM is the socket for a peer that does not speak ZeroMQ: raw TCP, no ZMTP, no framing. Every
//! message is two frames, [identity, bytes]: the identity the socket gave one TCP connection, and
//! whatever one read from it returned (a request may come in pieces, or with more behind it).
//! Sending [identity, bytes] writes the bytes to that connection; [identity, ""] closes it. libzmq
//! also reports a connect and the peer's close as [identity, ""] (NetMQ reports neither: the desk
//! learns of a connection at its first message, whatever it holds). The main thread owns the
//! socket; this file keeps what it knows of each connection, parses the HTTP subset, and serves
//! the page, the commands and the event stream.
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::contract::{bind, log, recv_if_ready, Failure};
use crate::monitor::{self, OnOff};

/// The page, built into the program and served byte for byte.
const PAGE: &[u8] = include_bytes!("../../examples/desk/page.html");

const MAX_HEAD: usize = 8192; // the request line and the headers, up to and including CRLF CRLF
const MAX_BODY: usize = 4096; // Content-Length
const MAX_IDENTITY: usize = 256; // bytes of a STREAM identity
const MAX_CONNECTIONS: usize = 256; // known at once; one more is closed unanswered
const MAX_RECENT: usize = 1000; // lines in the replay's ring
const MAX_LATEST: usize = 256; // keys whose latest line the replay keeps
const RECEIVE_BATCH: usize = 100; // messages read in one call: the pipes get their turn too
const REQUEST_TIME: Duration = Duration::from_millis(5000); // for a whole request, from its first message
const CLOSE_TIME: Duration = Duration::from_millis(1000); // for the client to close after a response

/// The targets served, and the method of each.
const TARGETS: [(&str, &str); 6] =
    [("/", "GET"), ("/events", "GET"), ("/follow", "POST"), ("/forget", "POST"), ("/chat", "POST"), ("/value", "POST")];

/// What the desk's command handler says of a command: Ok (204), or the status (400, 409) and why.
pub type Answer = Result<(), (u16, String)>;

/// The desk's command handler: (this Web, the target, the body).
pub type OnCommand<'a> = dyn FnMut(&mut Web, &str, &[u8]) -> Answer + 'a;

/// Why a request is refused: the status, and one line for its body.
type Refusal = (u16, &'static str);

/// Where a connection is in its one request.
#[derive(PartialEq)]
enum State {
    Reading,   // its request is coming in, until its deadline
    Answered,  // the response went; the client closes it, or the desk does at the deadline
    Streaming, // an event stream: every line the desk writes
    Closing,   // to be closed as soon as its queue takes the close (a slow reader)
}

struct Connection {
    buffer: Vec<u8>, // the request so far: at most MAX_HEAD + MAX_BODY bytes
    deadline: Instant,
    state: State,
}

pub struct Web {
    socket: zmq::Socket,
    pub endpoint: String, // bound: a wildcard port resolved
    connections: HashMap<Vec<u8>, Connection>,
    serving: bool,                   // the desk said `ready`: the start-up lines are all in
    startup: Vec<Vec<u8>>,           // the lines until then (MAX_RECENT at most), as sent
    recent: VecDeque<Vec<u8>>,       // the last MAX_RECENT other lines, as sent
    latest: Vec<(Vec<u8>, Vec<u8>)>, // key -> its latest line, as sent, in the order the keys came
}

/// What a non-blocking send did.
#[derive(PartialEq)]
enum Sent {
    Yes,
    Full, // the connection's queue is at the high-water mark: nothing was sent
    Gone, // the peer has gone (EHOSTUNREACH)
}

/// Send [identity, bytes], never waiting: a blocking send to a slow reader would freeze the desk.
/// STREAM refuses the identity frame when the connection's queue is full (EAGAIN), and when the
/// identity is no connection's any more (EHOSTUNREACH).
fn send(socket: &zmq::Socket, identity: &[u8], bytes: &[u8]) -> Sent {
    match socket.send_multipart([identity, bytes], zmq::DONTWAIT) {
        Ok(()) => Sent::Yes,
        Err(zmq::Error::EAGAIN) | Err(zmq::Error::EINTR) => Sent::Full,
        Err(zmq::Error::EHOSTUNREACH) => Sent::Gone,
        Err(error) => {
            log(&format!("desk: cannot send to a page's connection: {}", error));
            Sent::Gone
        }
    }
}

impl Connection {
    /// What a send means for the connection: false if it is to be forgotten (its peer has gone).
    /// A full queue (a slow reader) gets nothing more, and is closed once it has room (expire).
    fn after(&mut self, sent: Sent) -> bool {
        if sent == Sent::Full {
            self.state = State::Closing;
        }
        sent != Sent::Gone
    }

    /// Send a response and move to `then`; false if the connection is to be forgotten.
    fn respond(&mut self, socket: &zmq::Socket, identity: &[u8], response: &[u8], then: State, now: Instant) -> bool {
        let sent = send(socket, identity, response);
        if sent == Sent::Yes {
            // Never closed right after a response (NetMQ would drop what is still queued): the
            // client closes, every response says so, or the desk does once it is long flushed.
            self.state = then;
            self.deadline = now + CLOSE_TIME;
        }
        self.after(sent)
    }

    /// Close it: an empty frame. False once it is closed (or gone); a full queue tries again later.
    fn close(&mut self, socket: &zmq::Socket, identity: &[u8]) -> bool {
        match send(socket, identity, b"") {
            Sent::Yes => false,
            sent => self.after(sent),
        }
    }
}

impl Web {
    /// Bind the page's STREAM socket (the main thread's, like its pipes' ends).
    pub fn new(context: &zmq::Context, endpoint: &str, monitor: OnOff) -> Result<Web, Failure> {
        let socket = context.socket(zmq::STREAM)?;
        // Linger 0: at the end, an open event stream has nothing worth waiting for.
        socket.set_linger(0)?;
        // 1000 messages queued per connection, on purpose: the bound on what one slow reader holds.
        // A send beyond it is refused at once (EAGAIN), never waited for.
        socket.set_sndhwm(1000)?;
        // No ZMQ_MAXMSGSIZE: STREAM decodes no messages, each one read is at most 8192 bytes; the
        // limits are ours, per connection.
        monitor::attach(context, &socket, "http", monitor)?; // a browser's connections, accepted and closed
        let endpoint = bind(&socket, endpoint)?;
        let (connections, startup, recent, latest) = (HashMap::new(), Vec::new(), VecDeque::new(), Vec::new());
        Ok(Web { socket, endpoint, connections, serving: false, startup, recent, latest })
    }

    /// The socket to poll, with the pipes.
    pub fn socket(&self) -> &zmq::Socket {
        &self.socket
    }

    /// The desk said `ready`: the lines from now on are not start-up lines.
    pub fn serving(&mut self) {
        self.serving = true;
    }

    /// Read what the connections sent, at most RECEIVE_BATCH messages, and answer each request
    /// that is whole. A command (POST) goes to `on_command(web, target, body)`, the desk's handler,
    /// which reports it through this same Web (hence the parameter) and says 204, 400 or 409.
    pub fn receive(&mut self, now: Instant, on_command: &mut OnCommand) -> Result<(), Failure> {
        for _ in 0..RECEIVE_BATCH {
            // POLLIN is a hint: the receive does not wait.
            let Some(frames) = recv_if_ready(&self.socket)? else { break };
            let Ok([identity, bytes]) = <[Vec<u8>; 2]>::try_from(frames) else { continue };
            if !(1..=MAX_IDENTITY).contains(&identity.len()) {
                continue;
            }
            let known = self.connections.contains_key(&identity);
            if known && bytes.is_empty() {
                self.connections.remove(&identity); // the peer closed it (libzmq's notification)
                continue;
            }
            if !known {
                // A new connection: libzmq's [identity, ""] at connect, or NetMQ's first data.
                if self.connections.len() >= MAX_CONNECTIONS && !self.close_oldest_answered() {
                    send(&self.socket, &identity, b""); // closed at once, unanswered
                    continue;
                }
                let connection = Connection { buffer: Vec::new(), deadline: now + REQUEST_TIME, state: State::Reading };
                self.connections.insert(identity.clone(), connection);
            }
            self.read(identity, &bytes, now, on_command);
        }
        Ok(())
    }

    /// Add bytes to a connection's request; answer it once it is whole, or broken.
    fn read(&mut self, identity: Vec<u8>, bytes: &[u8], now: Instant, on_command: &mut OnCommand) {
        let Some(connection) = self.connections.get_mut(&identity) else { return };
        if connection.state != State::Reading {
            return; // one request per connection: whatever follows it is ignored
        }
        // Never more than a request can hold: a peer cannot make the buffer grow.
        let room = MAX_HEAD + MAX_BODY - connection.buffer.len();
        connection.buffer.extend_from_slice(&bytes[..bytes.len().min(room)]);
        // Out of the connection for the handler, which gets the whole Web.
        let buffer = std::mem::take(&mut connection.buffer);
        let (response, then) = match parse(&buffer) {
            Ok(None) => {
                connection.buffer = buffer; // the rest is to come, before the deadline
                return;
            }
            Ok(Some(request)) => self.route(&request, on_command),
            Err((status, why)) => (error(status, why, ""), State::Answered),
        };
        let Some(connection) = self.connections.get_mut(&identity) else { return };
        if !connection.respond(&self.socket, &identity, &response, then, now) {
            self.connections.remove(&identity);
        }
    }

    /// The response to a whole request, and the connection's state after it.
    fn route(&mut self, request: &Request, on_command: &mut OnCommand) -> (Vec<u8>, State) {
        let Some(&(target, method)) = TARGETS.iter().find(|(target, _)| target.as_bytes() == request.target) else {
            return (error(404, "no such page", ""), State::Answered);
        };
        if request.method != method.as_bytes() {
            return (error(405, &format!("{} only", method), &format!("Allow: {}\r\n", method)), State::Answered);
        }
        let response = match (target, request.body) {
            ("/", _) => with_body(200, "text/html; charset=utf-8", PAGE, ""),
            ("/events", _) => return (self.replay(), State::Streaming),
            (_, None) => error(411, "a POST needs a Content-Length", ""),
            (_, Some(body)) => match on_command(self, target, body) {
                Ok(()) => head(204, "").into_bytes(),
                Err((status, why)) => error(status, &why, ""),
            },
        };
        (response, State::Answered)
    }

    /// A new event stream's first message: the head, then the replay, so that a page opened at any
    /// time shows the whole state: the start-up lines, the recent ones, the latest of each key.
    fn replay(&self) -> Vec<u8> {
        let mut bytes = head(200, "Content-Type: text/event-stream\r\n").into_bytes();
        self.startup.iter().for_each(|line| bytes.extend_from_slice(line));
        self.recent.iter().for_each(|line| bytes.extend_from_slice(line));
        self.latest.iter().for_each(|(_, line)| bytes.extend_from_slice(line));
        bytes
    }

    /// A line the desk wrote, to every event stream and to the replay: as the latest line of `key`
    /// (`tick SYMBOL`, `applied KEY`, `progress`) or in order with the others.
    pub fn publish(&mut self, line: &[u8], key: Option<&[u8]>) {
        let event = [b"data: ", line, b"\n\n"].concat();
        if !self.serving && self.startup.len() < MAX_RECENT {
            self.startup.push(event.clone());
        } else if let Some(key) = key {
            if let Some(latest) = self.latest.iter_mut().find(|(known, _)| known == key) {
                latest.1 = event.clone();
            } else if self.latest.len() < MAX_LATEST {
                self.latest.push((key.to_vec(), event.clone())); // beyond that: live, not replayed
            }
        } else {
            if self.recent.len() == MAX_RECENT {
                self.recent.pop_front();
            }
            self.recent.push_back(event.clone());
        }
        // A slow reader: once its queue refuses an event, it gets no more, and is closed as soon as
        // its queue takes the close (expire). Nobody else waits for it.
        let socket = &self.socket;
        self.connections.retain(|identity, connection| {
            connection.state != State::Streaming || connection.after(send(socket, identity, &event))
        });
    }

    /// The deadlines: a request not whole in time (408 if some of it came, then closed), a client
    /// that did not close after its response, and the close of a slow stream once it has room.
    pub fn expire(&mut self, now: Instant) {
        let socket = &self.socket;
        self.connections.retain(|identity, connection| match connection.state {
            State::Streaming => true,
            State::Closing => connection.close(socket, identity),
            _ if now < connection.deadline => true,
            State::Reading if !connection.buffer.is_empty() => {
                let response = error(408, "the request did not come in time", "");
                connection.respond(socket, identity, &response, State::Answered, now)
            }
            State::Reading | State::Answered => connection.close(socket, identity),
        });
    }

    /// At the limit: close the connection answered longest ago (it only waits for its client to
    /// close, which NetMQ never reports). False when none is answered.
    fn close_oldest_answered(&mut self) -> bool {
        let oldest = self.connections.iter().filter(|(_, c)| c.state == State::Answered).min_by_key(|(_, c)| c.deadline);
        let Some(identity) = oldest.map(|(identity, _)| identity.clone()) else { return false };
        send(&self.socket, &identity, b"");
        self.connections.remove(&identity);
        true
    }

    /// Close the socket: linger 0, nothing is flushed.
    pub fn close(self) {
        drop(self.socket);
    }
}

// --- the HTTP subset -------------------------------------------------------------------------

/// A whole request; `body` None: no Content-Length.
struct Request<'a> {
    method: &'a [u8],
    target: &'a [u8],
    body: Option<&'a [u8]>,
}

/// The request in `buffer`: None while it is not whole, or the status that refuses it and why.
fn parse(buffer: &[u8]) -> Result<Option<Request<'_>>, Refusal> {
    // The head ends at the first CRLF CRLF, within MAX_HEAD bytes.
    let Some(end) = find(&buffer[..buffer.len().min(MAX_HEAD)], b"\r\n\r\n") else {
        return if buffer.len() >= MAX_HEAD { Err((431, "the request's head is over 8192 bytes")) } else { Ok(None) };
    };
    let mut lines = split_crlf(&buffer[..end]).into_iter();
    let (method, target) = request_line(lines.next().unwrap_or_default())?;
    let mut length: Option<u64> = None;
    let mut chunked = false;
    for line in lines {
        let Some(colon) = line.iter().position(|&byte| byte == b':') else {
            return Err((400, "a header line without a colon"));
        };
        let (name, value) = (&line[..colon], value_of(&line[colon + 1..]));
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            chunked = true;
        } else if name.eq_ignore_ascii_case(b"content-length") {
            if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
                return Err((400, "Content-Length is decimal digits"));
            }
            // Digits only: the parse can fail only by overflow, far above the limit anyway.
            let n = std::str::from_utf8(value).ok().and_then(|digits| digits.parse().ok()).unwrap_or(u64::MAX);
            if length.is_some_and(|known| known != n) {
                return Err((400, "two different Content-Lengths"));
            }
            length = Some(n);
        }
    }
    if chunked {
        return Err((501, "no Transfer-Encoding: send a Content-Length"));
    }
    let start = end + 4;
    match length {
        Some(n) if n > MAX_BODY as u64 => Err((413, "the body is over 4096 bytes")), // without reading it
        Some(n) if buffer.len() < start + n as usize => Ok(None),
        Some(n) => Ok(Some(Request { method, target, body: Some(&buffer[start..start + n as usize]) })),
        None => Ok(Some(Request { method, target, body: None })),
    }
}

/// METHOD SP TARGET SP VERSION: three non-empty parts of printable ASCII, HTTP/1.1 or HTTP/1.0.
fn request_line(line: &[u8]) -> Result<(&[u8], &[u8]), Refusal> {
    let bad = (400, "the request line is not METHOD TARGET HTTP/1.1");
    let parts: Vec<&[u8]> = line.split(|&byte| byte == b' ').collect();
    let [method, target, version] = parts[..] else { return Err(bad) };
    if parts.iter().any(|part| part.is_empty() || !part.iter().all(u8::is_ascii_graphic)) {
        return Err(bad);
    }
    match version {
        b"HTTP/1.1" | b"HTTP/1.0" => Ok((method, target)),
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor] if major.is_ascii_digit() && minor.is_ascii_digit() => {
            Err((505, "HTTP/1.1 or HTTP/1.0 only"))
        }
        _ => Err(bad),
    }
}

/// A header's value without the spaces and tabs around it.
fn value_of(mut value: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = value {
        value = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = value {
        value = rest;
    }
    value
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

/// The lines of a head, without their CRLFs.
fn split_crlf(mut bytes: &[u8]) -> Vec<&[u8]> {
    let mut lines = Vec::new();
    while let Some(at) = find(bytes, b"\r\n") {
        lines.push(&bytes[..at]);
        bytes = &bytes[at + 2..];
    }
    lines.push(bytes);
    lines
}

/// A response's head: the status line, `fields`, and the fields every response has.
fn head(status: u16, fields: &str) -> String {
    format!("HTTP/1.1 {} {}\r\n{}Cache-Control: no-store\r\nConnection: close\r\n\r\n", status, reason(status), fields)
}

fn with_body(status: u16, content_type: &str, body: &[u8], fields: &str) -> Vec<u8> {
    let fields = format!("Content-Type: {}\r\nContent-Length: {}\r\n{}", content_type, body.len(), fields);
    [head(status, &fields).as_bytes(), body].concat()
}

/// An error: one line of text saying why.
fn error(status: u16, why: &str, fields: &str) -> Vec<u8> {
    with_body(status, "text/plain; charset=utf-8", format!("{}\n", why).as_bytes(), fields)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}
