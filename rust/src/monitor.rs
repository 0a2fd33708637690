//! Socket monitors: with `--monitor on`, every socket whose endpoint a flag gives reports its
//! connection events as `socket-event` events (examples/README.md, "Socket monitors: `--monitor
//! on`"); and under PLAIN or CURVE, the handshake watcher that tells a role of every handshake that
//! fails (examples/README.md, "Handshake failures: the socket monitor").
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

use serde_json::json;

use crate::contract::{emit, recv_if_ready, Failure};

/// --monitor on|off, on every role of chat, ticker, valuation, query and desk.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

/// One inproc endpoint per watched socket in the process (the desk watches several, from several threads).
static WATCHED: AtomicUsize = AtomicUsize::new(0);

/// With --monitor on, narrate `socket`'s connections as `socket-event`s named `flag` (its flag's name).
///
/// A thread of its own per watched socket reads the monitor, so the role's loop is the same with
/// and without --monitor; and since the role's lines are over once it has said `done`, the
/// monitors' are dropped from then on (contract::emit).
pub fn attach(context: &zmq::Context, socket: &zmq::Socket, flag: &'static str, monitor: OnOff) -> Result<(), Failure> {
    if monitor == OnOff::Off {
        return Ok(());
    }
    let endpoint = format!("inproc://monitor.{}-{}", flag, WATCHED.fetch_add(1, Ordering::Relaxed));
    // [monitor] A socket's life (listening, connected, accepted, disconnected, handshakes) never
    // shows on the socket itself: libzmq publishes each event on an inproc PAIR of its own, which
    // ours connects to. Attached before the socket's bind or connect: libzmq drops events while no
    // peer is connected to that PAIR, and `listening` or the first `connected` would be lost.
    socket.monitor(&endpoint, zmq::SocketEvent::ALL as i32)?;
    // Connected here, in the calling thread, before the watched socket's bind or connect.
    let pair = context.socket(zmq::PAIR)?;
    pair.set_linger(0)?;
    pair.connect(&endpoint)?;
    // SAFETY: the pointer is the live socket just made, whose ownership passes to the new Socket.
    // That Socket holds no handle on the context: when the role drops its last one, the context is
    // terminated (its sockets' lingers honoured, as without --monitor), which wakes the blocked
    // receive below with ETERM; the thread then closes the PAIR, and the termination completes.
    let pair = unsafe { zmq::Socket::from_raw(pair.into_raw()) };
    // Starting the thread is the memory barrier libzmq asks for when a socket changes threads.
    thread::Builder::new()
        .name(format!("monitor-{}", flag))
        .spawn(move || narrate(pair, flag))
        .map_err(|error| Failure::new("thread", format!("cannot start the monitor of {}: {}", flag, error)))?;
    Ok(())
}

/// The monitor thread: every event as a `socket-event`, until the watched socket is closed
/// (MONITOR_STOPPED, not reported) or the context is terminated (ETERM). Never joined.
fn narrate(pair: zmq::Socket, flag: &str) {
    // Two frames: 6 bytes [u16 event, u32 value] in the machine's byte order, then the endpoint.
    while let Ok(frames) = receive(&pair) {
        let [head, endpoint] = &frames[..] else { continue };
        let Ok(head) = <[u8; 6]>::try_from(head.as_slice()) else { continue };
        let event = u16::from_ne_bytes([head[0], head[1]]);
        let value = u32::from_ne_bytes([head[2], head[3], head[4], head[5]]);
        if event == zmq::SocketEvent::MONITOR_STOPPED.to_raw() {
            break;
        }
        if let Some(kind) = kind(event) {
            let endpoint = String::from_utf8_lossy(endpoint);
            emit("socket-event", json!({ "socket": flag, "kind": kind, "endpoint": endpoint, "value": value }));
        }
    }
} // the PAIR is closed here

/// One whole message; a signal (EINTR) is no reason to stop. Any error (ETERM) is.
fn receive(pair: &zmq::Socket) -> zmq::Result<Vec<Vec<u8>>> {
    let mut frames = Vec::new();
    loop {
        match pair.recv_bytes(0) {
            Ok(frame) => frames.push(frame),
            Err(zmq::Error::EINTR) => continue,
            Err(error) => return Err(error),
        }
        if !pair.get_rcvmore()? {
            return Ok(frames);
        }
    }
}

/// A ZMQ_EVENT_* as the contract names it.
fn kind(event: u16) -> Option<&'static str> {
    use zmq::SocketEvent::*;
    let kinds = [
        (CONNECTED, "connected"),
        (CONNECT_DELAYED, "connect-delayed"),
        (CONNECT_RETRIED, "connect-retried"),
        (LISTENING, "listening"),
        (BIND_FAILED, "bind-failed"),
        (ACCEPTED, "accepted"),
        (ACCEPT_FAILED, "accept-failed"),
        (CLOSED, "closed"),
        (CLOSE_FAILED, "close-failed"),
        (DISCONNECTED, "disconnected"),
        (HANDSHAKE_SUCCEEDED, "handshake-succeeded"),
        (HANDSHAKE_FAILED_NO_DETAIL, "handshake-failed-no-detail"),
        (HANDSHAKE_FAILED_PROTOCOL, "handshake-failed-protocol"),
        (HANDSHAKE_FAILED_AUTH, "handshake-failed-auth"),
    ];
    kinds.into_iter().find(|(known, _)| known.to_raw() == event).map(|(_, kind)| kind)
}

// --- the handshake watcher, under PLAIN or CURVE ----------------------------------------------

/// A socket monitor that watches for handshake failures only (security.rs sets it up). It is not
/// read by a thread: the role polls its PAIR in its own loop, after the ZAP handler (a server's)
/// and before its own sockets, and reports each failure (a server) or gives up at the first one
/// (a client).
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
        // [monitor] A refused handshake is invisible on the socket (it only sees no peer): the
        // failure arrives as an event on the monitor's PAIR, with its value (an errno, a
        // ZMQ_PROTOCOL_ERROR_* code, or the ZAP status code).
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
