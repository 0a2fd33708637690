//! The launch contract (examples/README.md) in Rust: JSON Lines events on stdout, logs on stderr,
//! fatal failures, the flag parsers, the stop signal, the --timeout deadline, bind and connect, and
//! the loop's pieces every example shares (examples/README.md, "One loop shape"): the poll, the
//! receive that never blocks, the send that waits for room. Security is security.rs; socket
//! monitors are monitor.rs.
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
