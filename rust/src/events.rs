//! The launch contract's reporting half (JSON Lines events on stdout, logs on stderr), and the
//! deadline, failure and polling helpers every example shares.
use std::io::Write;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Write one event as one JSON line and flush it at once, so the orchestrator sees it live.
/// `fields` is a JSON object (`json!({...})`); "event" is written first, then its fields.
pub fn emit(event: &str, fields: Value) {
    let head = json!({ "event": event }).to_string(); // {"event":"..."}
    let fields = fields.to_string(); // {...}
    let line = if fields == "{}" {
        head
    } else {
        format!("{},{}", &head[..head.len() - 1], &fields[1..])
    };
    let mut out = std::io::stdout().lock();
    // Nobody is left to tell if stdout is gone, so a failed write is not an error of the role.
    let _ = writeln!(out, "{}", line).and_then(|_| out.flush());
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
