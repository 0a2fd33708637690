//! The launch contract (examples/README.md) in Rust: JSON Lines events on stdout, logs on stderr,
//! the --timeout deadline, fatal failures, and the flag, stop signal, socket and polling helpers
//! every example shares; and its security pieces: CURVE key flags, the ZAP handler, the monitor.
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// stdout is shared by the role's thread(s) and the socket monitors' threads (monitor.rs): every
/// line is written and flushed whole under this lock, which guards whether the role has said `done`.
/// From then on a monitor's `socket-event` is dropped: nothing comes after `done`.
static STDOUT: Mutex<bool> = Mutex::new(false);

/// Write one event as one JSON line and flush it at once, so the orchestrator sees it live.
/// `fields` is a JSON object (`json!({...})`); "event" is written first, then its fields.
pub fn emit(event: &str, fields: Value) {
    let line = event_line(event, fields);
    let mut done = STDOUT.lock().unwrap_or_else(PoisonError::into_inner);
    if !(*done && event == "socket-event") {
        write(line.as_bytes());
        *done |= event == "done";
    }
}

/// One event as one line of JSON, without the newline: "event" first, then its fields.
pub fn event_line(event: &str, fields: Value) -> String {
    let head = json!({ "event": event }).to_string(); // {"event":"..."}
    let fields = fields.to_string(); // {...}
    if fields == "{}" {
        head
    } else {
        format!("{},{}", &head[..head.len() - 1], &fields[1..])
    }
}

/// Write one line to stdout and flush it (a desk's main thread writes its agents' lines so).
pub fn write_line(line: &[u8]) {
    let _stdout = STDOUT.lock().unwrap_or_else(PoisonError::into_inner);
    write(line);
}

fn write(line: &[u8]) {
    let mut out = std::io::stdout().lock();
    // Nobody is left to tell if stdout is gone, so a failed write is not an error of the role.
    let _ = out.write_all(line).and_then(|_| out.write_all(b"\n")).and_then(|_| out.flush());
}

pub fn log(message: &str) {
    eprintln!("{}", message);
}

/// A fatal error: reported as an `error` event, then the role exits 1.
#[derive(Debug)]
pub struct Failure {
    pub code: &'static str,
    pub reason: String,
}

impl Failure {
    pub fn new(code: &'static str, reason: impl Into<String>) -> Self {
        Failure { code, reason: reason.into() }
    }
}

/// Any other ZeroMQ call that fails (a socket option, a send) fails the role.
impl From<zmq::Error> for Failure {
    fn from(error: zmq::Error) -> Self {
        Failure::new("zmq", error.to_string())
    }
}

/// A bad combination of flags that the parser alone cannot see: exit 2 with the message on stderr
/// and nothing on stdout, like any other bad command line.
pub fn usage(message: &str) -> ! {
    clap::Error::raw(clap::error::ErrorKind::ArgumentConflict, format!("{}\n", message)).exit()
}

pub const MAX_NAME: usize = 32; // bytes of UTF-8: chat handles, subscriber names

/// A clap value parser: a name of 1 to MAX_NAME bytes of UTF-8.
pub fn name(value: &str) -> Result<String, String> {
    if (1..=MAX_NAME).contains(&value.len()) {
        Ok(value.to_string())
    } else {
        Err(format!("a name is 1 to {} bytes of UTF-8", MAX_NAME))
    }
}

/// --security: ZMTP 3's three mechanisms.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mechanism {
    /// no authentication, no encryption
    Null,
    /// a username and password, in the clear
    Plain,
    /// public-key authentication and encryption (CurveZMQ)
    Curve,
}

impl Mechanism {
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Null => "null",
            Mechanism::Plain => "plain",
            Mechanism::Curve => "curve",
        }
    }
}

/// Z85's alphabet (RFC 32): the character of each digit 0 to 84. It has no `,`.
const Z85: &str = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";

/// A clap value parser: a CURVE key, 40 characters of Z85 encoding 32 bytes. It stays text: libzmq
/// takes the 40 characters as they are for CURVE_SECRETKEY, _PUBLICKEY and _SERVERKEY.
pub fn z85_key(value: &str) -> Result<String, String> {
    let bad = || format!("a CURVE key is 40 characters of Z85, got {:?}", value);
    if value.len() != 40 {
        return Err(bad());
    }
    // Each 5 characters are one base-85 number that must fit the 4 bytes it stands for.
    for group in value.as_bytes().chunks(5) {
        let mut number = 0u64;
        for &c in group {
            number = number * 85 + Z85.find(c as char).ok_or_else(bad)? as u64;
        }
        if number > u32::MAX.into() {
            return Err(bad());
        }
    }
    Ok(value.to_string())
}

/// A clap value parser: a PLAIN username or password, 1 to 255 bytes (libzmq's limits).
pub fn plain_credential(value: &str) -> Result<String, String> {
    if (1..=255).contains(&value.len()) {
        Ok(value.to_string())
    } else {
        Err("a PLAIN username or password is 1 to 255 bytes".to_string())
    }
}

/// SIGTERM and SIGINT only raise a flag (ctrlc runs the handler on a thread of its own);
/// the serving loop looks at it after every poll, so it notices within one poll interval.
pub fn stop_signal() -> Result<Arc<AtomicBool>, Failure> {
    let raised = Arc::new(AtomicBool::new(false));
    let flag = raised.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
        .map_err(|error| Failure::new("signal", format!("cannot handle signals: {}", error)))?;
    Ok(raised)
}

/// SIGTERM and SIGINT as a channel, for a role that has nothing to poll while it waits for them.
pub fn stop_channel() -> Result<mpsc::Receiver<()>, Failure> {
    let (raise, raised) = mpsc::channel();
    ctrlc::set_handler(move || {
        let _ = raise.send(());
    })
    .map_err(|error| Failure::new("signal", format!("cannot handle signals: {}", error)))?;
    Ok(raised)
}

/// Bind `socket` and return the endpoint actually bound.
pub fn bind(socket: &zmq::Socket, endpoint: &str) -> Result<String, Failure> {
    let cannot = |error: zmq::Error| Failure::new("bind", format!("cannot bind {}: {}", endpoint, error));
    socket.bind(endpoint).map_err(cannot)?;
    // ZMQ_LAST_ENDPOINT: the address actually bound, with the port a wildcard `*` chose.
    match socket.get_last_endpoint().map_err(cannot)? {
        Ok(bound) => Ok(bound),
        Err(bytes) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
    }
}

/// Connect `socket`. ZeroMQ connects in the background, so this fails only on a bad endpoint.
pub fn connect(socket: &zmq::Socket, endpoint: &str) -> Result<(), Failure> {
    socket
        .connect(endpoint)
        .map_err(|error| Failure::new("connect", format!("cannot connect {}: {}", endpoint, error)))
}

/// Milliseconds from now until `when` (0 if past), rounded up so a poll never wakes just early.
pub fn ms_until(when: Instant) -> i64 {
    let left = when.saturating_duration_since(Instant::now());
    (left + Duration::from_nanos(999_999)).as_millis() as i64
}

/// The role's --timeout. Times are zmq poll timeouts in milliseconds, where -1 means "no limit".
pub struct Deadline {
    end: Option<Instant>,
}

impl Deadline {
    pub fn new(timeout_ms: u32) -> Self {
        let end = if timeout_ms > 0 {
            Some(Instant::now() + Duration::from_millis(timeout_ms.into()))
        } else {
            None
        };
        Deadline { end }
    }

    /// Milliseconds left, or -1 when there is no limit (0).
    pub fn remaining_ms(&self) -> i64 {
        self.end.map_or(-1, ms_until)
    }

    /// The time left, or None when there is no limit.
    pub fn remaining(&self) -> Option<Duration> {
        self.end.map(|end| end.saturating_duration_since(Instant::now()))
    }

    pub fn expired(&self) -> bool {
        matches!(self.end, Some(end) if Instant::now() >= end)
    }

    /// A poll timeout of at most `ms` that never runs past the deadline.
    pub fn cap(&self, ms: i64) -> i64 {
        match self.remaining_ms() {
            -1 => ms,
            left => ms.min(left),
        }
    }
}

/// Poll one socket for an incoming message, for at most `timeout_ms` (-1: no limit).
/// A signal interrupts zmq_poll (EINTR): that is "nothing yet", and the caller looks again.
pub fn readable(socket: &zmq::Socket, timeout_ms: i64) -> Result<bool, Failure> {
    match socket.poll(zmq::POLLIN, timeout_ms) {
        Ok(ready) => Ok(ready > 0),
        Err(zmq::Error::EINTR) => Ok(false),
        Err(error) => Err(error.into()),
    }
}

/// Poll several sockets at once, for at most `timeout_ms` (-1: no limit); each item then says
/// whether its socket is ready (`is_readable`, `is_writable`). One wait for all of them: a role
/// that listens on two sockets needs neither a thread per socket nor a busy loop.
/// A signal interrupts zmq_poll (EINTR): no item is marked ready, and the caller looks again.
pub fn poll(items: &mut [zmq::PollItem], timeout_ms: i64) -> Result<(), Failure> {
    match zmq::poll(items, timeout_ms) {
        Ok(_) | Err(zmq::Error::EINTR) => Ok(()),
        Err(error) => Err(error.into()),
    }
}

/// Poll several sockets for incoming messages at once, for at most `timeout_ms` (-1: no limit), and
/// say of each, in order, whether a message is waiting.
pub fn readable_each(sockets: &[&zmq::Socket], timeout_ms: i64) -> Result<Vec<bool>, Failure> {
    let mut items: Vec<_> = sockets.iter().map(|socket| socket.as_poll_item(zmq::POLLIN)).collect();
    poll(&mut items, timeout_ms)?;
    Ok(items.iter().map(zmq::PollItem::is_readable).collect())
}

/// Receive the message a poll said is waiting: every frame of it, or None when there is nothing
/// after all. POLLIN is a hint, not a promise: a REP socket drops a malformed request (a DEALER's
/// without the empty delimiter frame) inside the receive, a REQ a reply it cannot route, and a
/// blocking receive would then wait for the next message, deaf to the stop flag, the deadline and
/// the heartbeat. So the first frame is taken with DONTWAIT, and EAGAIN sends the caller back to
/// its loop. The other frames of a message arrive together with the first, so reading them is safe.
pub fn recv_if_ready(socket: &zmq::Socket) -> Result<Option<Vec<Vec<u8>>>, Failure> {
    nothing_if_again(socket.recv_multipart(zmq::DONTWAIT))
}

/// As recv_if_ready, but one frame only, whatever its more flag (the ticker publisher judges every
/// frame its XPUB hands over on its own).
pub fn recv_frame_if_ready(socket: &zmq::Socket) -> Result<Option<Vec<u8>>, Failure> {
    nothing_if_again(socket.recv_bytes(zmq::DONTWAIT))
}

/// EAGAIN (nothing waiting) and EINTR (a signal came first) are not errors: the caller's loop
/// goes round, looks at the stop flag, and polls again.
fn nothing_if_again<T>(received: zmq::Result<T>) -> Result<Option<T>, Failure> {
    match received {
        Ok(received) => Ok(Some(received)),
        Err(zmq::Error::EAGAIN) | Err(zmq::Error::EINTR) => Ok(None),
        Err(error) => Err(error.into()),
    }
}

/// Who a ZAP handler admits.
pub enum Admit {
    /// CURVE clients whose public key (Z85) is one of these
    CurveKeys(Vec<String>),
    /// PLAIN peers with exactly this username and password
    Plain { user: String, password: String },
}

/// A ZAP handler (RFC 27): libzmq asks whatever is bound at `inproc://zeromq.zap.01` in the
/// context of a PLAIN or CURVE server socket to judge each handshake, and waits for the answer.
/// Its socket is polled in the role's own loop together with the others: no thread.
pub struct Zap {
    pub socket: zmq::Socket,
    admit: Admit,
}

impl Zap {
    /// Bind the handler. Bind it before the secure sockets, so that no handshake starts without it:
    /// with no handler, libzmq admits any CURVE client that knows the server key, and any password.
    pub fn bind(context: &zmq::Context, admit: Admit) -> Result<Self, Failure> {
        let socket = context.socket(zmq::REP)?; // REP: libzmq's side is a REQ, one request at a time
        socket.set_linger(0)?;
        socket.bind("inproc://zeromq.zap.01")?;
        Ok(Zap { socket, admit })
    }

    /// Answer the waiting request `200` or `400`, and report it as `authenticated` or `denied`.
    pub fn answer(&self) -> Result<(), Failure> {
        let Some(request) = recv_if_ready(&self.socket)? else { return Ok(()) };
        let frame = |i: usize| request.get(i).map_or(&[][..], Vec::as_slice);
        let (identity, verdict) = self.judge(&request);
        let (status, text, user_id) = match &verdict {
            Ok(()) => ("200", "OK", identity.as_str()),
            Err(reason) => ("400", reason.as_str(), ""),
        };
        // [version, request id (copied), status code, status text, user id, metadata]
        let reply = [&b"1.0"[..], frame(1), status.as_bytes(), text.as_bytes(), user_id.as_bytes(), b""];
        self.socket.send_multipart(reply, 0)?;
        let mechanism = String::from_utf8_lossy(frame(5)); // "CURVE" or "PLAIN", as libzmq wrote it
        match verdict {
            Ok(()) => emit("authenticated", json!({ "mechanism": mechanism, "identity": identity })),
            Err(reason) => {
                emit("denied", json!({ "mechanism": mechanism, "identity": identity, "reason": reason }))
            }
        }
        Ok(())
    }

    /// The peer's identity (the Z85 key or the username; "" if the request cannot be read) and
    /// whether it is admitted.
    fn judge(&self, request: &[Vec<u8>]) -> (String, Result<(), String>) {
        // [version, request id, domain, address, routing id, mechanism, credentials...]
        if request.len() < 6 || request[0] != b"1.0" {
            return (String::new(), Err("not a ZAP 1.0 request".to_string()));
        }
        match (request[5].as_slice(), &request[6..]) {
            // CURVE: the client's public key, 32 raw bytes; we report and compare it in Z85.
            (b"CURVE", [key]) if key.len() == 32 => {
                let key = zmq::z85_encode(key).expect("32 bytes are whole 4-byte groups");
                let admitted = matches!(&self.admit, Admit::CurveKeys(keys) if keys.contains(&key));
                let verdict = if admitted { Ok(()) } else { Err("the key is not one of --curve-clients".into()) };
                (key, verdict)
            }
            // PLAIN: username and password, as the client sent them.
            (b"PLAIN", [user, password]) => {
                let admitted = matches!(&self.admit, Admit::Plain { user: u, password: p }
                    if u.as_bytes() == user.as_slice() && p.as_bytes() == password.as_slice());
                let verdict = if admitted { Ok(()) } else { Err("wrong username or password".into()) };
                (String::from_utf8_lossy(user).into_owned(), verdict)
            }
            _ => (String::new(), Err("unknown mechanism or malformed credentials".to_string())),
        }
    }
}

/// A socket monitor that watches for handshake failures. libzmq publishes the watched socket's
/// events on an inproc PAIR of its own; ours connects to it and is polled like any other socket.
pub struct Monitor {
    pub socket: zmq::Socket,
    /// the watched socket's flag name (`requests`, `broadcasts`)
    pub name: &'static str,
}

const NO_DETAIL: u16 = zmq::SocketEvent::HANDSHAKE_FAILED_NO_DETAIL as u16; // value: an errno
const PROTOCOL: u16 = zmq::SocketEvent::HANDSHAKE_FAILED_PROTOCOL as u16; // value: ZMQ_PROTOCOL_ERROR_*
const AUTH: u16 = zmq::SocketEvent::HANDSHAKE_FAILED_AUTH as u16; // value: the ZAP status code

impl Monitor {
    /// Monitor `watched`; attach before its bind or connect, so that no handshake goes unseen.
    pub fn new(context: &zmq::Context, watched: &zmq::Socket, name: &'static str) -> Result<Self, Failure> {
        let endpoint = format!("inproc://monitor.{}", name);
        watched.monitor(&endpoint, (NO_DETAIL | PROTOCOL | AUTH).into())?;
        let socket = context.socket(zmq::PAIR)?;
        socket.set_linger(0)?;
        socket.connect(&endpoint)?;
        Ok(Monitor { socket, name })
    }

    /// Read the waiting event: the handshake failure (`no-detail`, `protocol` or `auth`) and its value.
    pub fn handshake_failure(&self) -> Result<Option<(&'static str, u32)>, Failure> {
        // Two frames: 6 bytes [u16 event, u32 value] in the machine's byte order, then the endpoint.
        let Some(frames) = recv_if_ready(&self.socket)? else { return Ok(None) };
        let head = match frames.first() {
            Some(head) if head.len() == 6 => head,
            _ => return Ok(None),
        };
        let event = u16::from_ne_bytes([head[0], head[1]]);
        let value = u32::from_ne_bytes([head[2], head[3], head[4], head[5]]);
        let failure = match event {
            NO_DETAIL => "no-detail",
            PROTOCOL => "protocol",
            AUTH => "auth",
            _ => return Ok(None),
        };
        Ok(Some((failure, value)))
    }
}

/// Send one message on a socket that may have no room for it: a PUSH with no peer connected yet,
/// or with every peer's queue at its high-water mark, would block in a plain send. Instead, wait
/// for room with a poll (POLLOUT), never past the deadline; `what` names the message for the
/// `timeout` error. (Once the first frame is accepted, ZeroMQ takes the rest of the message.)
pub fn send_when_room<F: AsRef<[u8]>>(
    socket: &zmq::Socket,
    frames: &[F],
    deadline: &Deadline,
    what: &str,
) -> Result<(), Failure> {
    loop {
        let room = match socket.poll(zmq::POLLOUT, deadline.cap(1000)) {
            Ok(ready) => ready > 0,
            Err(zmq::Error::EINTR) => false,
            Err(error) => return Err(error.into()),
        };
        if room {
            // DONTWAIT: should the room be gone again, EAGAIN sends us back to the poll.
            match socket.send_multipart(frames.iter().map(AsRef::as_ref), zmq::DONTWAIT) {
                Ok(()) => return Ok(()),
                Err(zmq::Error::EAGAIN) | Err(zmq::Error::EINTR) => {}
                Err(error) => return Err(error.into()),
            }
        }
        if deadline.expired() {
            return Err(Failure::new("timeout", format!("no room to send {}", what)));
        }
    }
}
