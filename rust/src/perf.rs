//! perf: throughput and latency as libzmq's perf tools measure them (examples/perf/PROTOCOL.md).
//!
//! The hot loops are what libzmq's own local_thr, remote_thr, local_lat and remote_lat do through
//! this binding: one reused `zmq::Message` to receive into, no allocation of ours per message, no
//! poll per message (each socket waits at most --timeout through its RCVTIMEO/SNDTIMEO, set once),
//! no event or log per message, and the overall deadline looked at once every 1000 messages.
use std::thread;
use std::time::Instant;

use clap::{value_parser, Args, Subcommand};
use serde_json::{json, Value};

use crate::contract::{bind, connect, emit, Deadline, Failure};

const ENDPOINT: &str = "tcp://127.0.0.1:5570";
const INPROC: &str = "inproc://perf";
const CHECK_EVERY: u64 = 1000; // messages between two looks at the deadline
/// ZMQ_MAXMSGSIZE is max(--size, this) on every socket: libzmq drops a bigger frame, and the
/// connection of its sender. The floor leaves room for the handshake's READY command, which the
/// same limit applies to.
const MIN_MAX_MESSAGE: usize = 256;

#[derive(Subcommand)]
pub enum Role {
    /// PULL, binds: receives --count messages, times them (libzmq's local_thr)
    ThrSink(ThroughputArgs),
    /// PUSH, connects: sends --count messages (libzmq's remote_thr)
    ThrSource(SourceArgs),
    /// REP, binds: sends back each of --count messages (libzmq's local_lat)
    LatEcho(EchoArgs),
    /// REQ, connects: --count round trips, timed (libzmq's remote_lat)
    LatPing(PingArgs),
    /// PUSH and PULL in one process, two threads, over inproc:// (libzmq's inproc_thr)
    InprocThr(InprocArgs),
}

#[derive(Args)]
pub struct ThroughputArgs {
    #[arg(long, default_value = ENDPOINT)]
    endpoint: String,
    #[arg(long, default_value_t = 64)]
    size: usize,
    #[arg(long, default_value_t = 100000, value_parser = value_parser!(u64).range(1..))]
    count: u64,
    #[arg(long, default_value_t = 60000)]
    timeout: u32,
}

/// The source's flags are the sink's: the same defaults.
pub type SourceArgs = ThroughputArgs;

#[derive(Args)]
pub struct EchoArgs {
    #[arg(long, default_value = ENDPOINT)]
    endpoint: String,
    #[arg(long, default_value_t = 64)]
    size: usize,
    #[arg(long, default_value_t = 10000, value_parser = value_parser!(u64).range(1..))]
    count: u64,
    #[arg(long, default_value_t = 60000)]
    timeout: u32,
}

/// The ping's flags are the echo's: the same defaults.
pub type PingArgs = EchoArgs;

#[derive(Args)]
pub struct InprocArgs {
    #[arg(long, default_value_t = 64)]
    size: usize,
    #[arg(long, default_value_t = 100000, value_parser = value_parser!(u64).range(1..))]
    count: u64,
    #[arg(long, default_value_t = 60000)]
    timeout: u32,
}

pub fn run(role: Role) -> Result<(), Failure> {
    match role {
        Role::ThrSink(args) => run_thr_sink(args),
        Role::ThrSource(args) => run_thr_source(args),
        Role::LatEcho(args) => run_lat_echo(args),
        Role::LatPing(args) => run_lat_ping(args),
        Role::InprocThr(args) => run_inproc_thr(args),
    }
}

/// --timeout as a ZeroMQ time option in milliseconds: -1 (no limit) for 0.
fn zmq_ms(timeout: u32) -> i32 {
    if timeout == 0 {
        -1
    } else {
        i32::try_from(timeout).unwrap_or(i32::MAX)
    }
}

/// A socket whose every send and receive waits at most `timeout` (RCVTIMEO and SNDTIMEO, set once
/// here): the blocking call itself is bounded, so the loop needs no poll per message, which would
/// cost as much as the message itself. It takes no frame bigger than the messages of `size` bytes.
fn socket(
    context: &zmq::Context,
    kind: zmq::SocketType,
    size: usize,
    timeout: u32,
    linger: i32,
) -> Result<zmq::Socket, Failure> {
    let socket = context.socket(kind)?;
    socket.set_linger(linger)?;
    socket.set_maxmsgsize(i64::try_from(size.max(MIN_MAX_MESSAGE)).unwrap_or(i64::MAX))?;
    socket.set_rcvtimeo(zmq_ms(timeout))?;
    socket.set_sndtimeo(zmq_ms(timeout))?;
    Ok(socket)
}

/// Receive one message into `message` (reused: zmq_msg_recv releases what it held before) and
/// check that it is one frame of exactly `size` bytes; anything else is fatal.
#[inline]
fn receive(socket: &zmq::Socket, message: &mut zmq::Message, size: usize) -> Result<(), Failure> {
    match socket.recv(message, 0) {
        Ok(()) => {}
        // EAGAIN: RCVTIMEO ran out with nothing to receive.
        Err(zmq::Error::EAGAIN) => return Err(Failure::new("timeout", "no message within the timeout")),
        Err(error) => return Err(error.into()),
    }
    if message.len() != size || message.get_more() {
        return Err(wrong_size(message, size));
    }
    Ok(())
}

#[cold]
fn wrong_size(message: &zmq::Message, size: usize) -> Failure {
    let more = if message.get_more() { " and more frames" } else { "" };
    Failure::new("wrong-size", format!("a message of {} bytes{}, expected {}", message.len(), more, size))
}

/// Send one message: a byte slice (copied into a message of the library's, as zmq_send does) or a
/// received `zmq::Message` (handed back as it is, no copy).
#[inline]
fn send<T: zmq::Sendable>(socket: &zmq::Socket, data: T) -> Result<(), Failure> {
    match socket.send(data, 0) {
        Ok(()) => Ok(()),
        // EAGAIN: SNDTIMEO ran out with no room to send (no peer, or its queue at the HWM).
        Err(zmq::Error::EAGAIN) => Err(Failure::new("timeout", "no room to send within the timeout")),
        Err(error) => Err(error.into()),
    }
}

/// The deadline, looked at once every CHECK_EVERY messages: cheap, and bounds the loop in time.
#[inline]
fn check(deadline: &Deadline, done: u64) -> Result<(), Failure> {
    if done % CHECK_EVERY == 0 && deadline.expired() {
        return Err(Failure::new("timeout", format!("not finished by the deadline ({} messages)", done)));
    }
    Ok(())
}

fn seconds_since(started: Instant) -> f64 {
    started.elapsed().as_secs_f64() // Instant: the monotonic clock, in nanoseconds
}

fn throughput(size: usize, count: u64, seconds: f64) -> Value {
    let rate = count as f64 / seconds;
    json!({
        "size": size,
        "count": count,
        "seconds": seconds,
        "msg_per_s": rate,
        "mbit_per_s": rate * size as f64 * 8.0 / 1e6,
    })
}

/// Receive `count` messages; time from the first arrival to the last (libzmq's local_thr).
fn sink(pull: &zmq::Socket, size: usize, count: u64, deadline: &Deadline) -> Result<Value, Failure> {
    let mut message = zmq::Message::new();
    receive(pull, &mut message, size)?;
    let started = Instant::now();
    for done in 1..count {
        check(deadline, done)?;
        receive(pull, &mut message, size)?;
    }
    Ok(throughput(size, count, seconds_since(started)))
}

/// Send `count` messages of `size` zero bytes.
fn source(push: &zmq::Socket, size: usize, count: u64, deadline: &Deadline) -> Result<(), Failure> {
    let buffer = vec![0u8; size]; // one buffer for every message; libzmq copies it as it sends
    for done in 0..count {
        check(deadline, done)?;
        // PUSH blocks while the sink's queue (and ours) is full, at the high-water mark of 1000
        // messages: that flow control is part of what is measured, as in remote_thr.
        send(push, &buffer[..])?;
    }
    Ok(())
}

fn run_thr_sink(args: ThroughputArgs) -> Result<(), Failure> {
    let deadline = Deadline::new(args.timeout);
    let context = zmq::Context::new();
    let pull = socket(&context, zmq::PULL, args.size, args.timeout, 0)?;
    emit("ready", json!({ "endpoint": bind(&pull, &args.endpoint)? }));
    let result = sink(&pull, args.size, args.count, &deadline)?;
    emit("result", result);
    emit("done", json!({}));
    Ok(()) // linger 0: the sink sends nothing, nothing waits
}

fn run_thr_source(args: SourceArgs) -> Result<(), Failure> {
    let deadline = Deadline::new(args.timeout);
    let context = zmq::Context::new();
    // Linger: when the last send returns, up to a high-water mark of messages are still queued;
    // closing must deliver them rather than drop them, within the role's --timeout.
    let push = socket(&context, zmq::PUSH, args.size, args.timeout, zmq_ms(args.timeout))?;
    connect(&push, &args.endpoint)?;
    emit("ready", json!({}));
    let sent = source(&push, args.size, args.count, &deadline);
    linger_at_close(&push, &sent, &deadline)?;
    sent?;
    emit("done", json!({}));
    drop(push);
    Ok(()) // dropping the context (zmq_ctx_term) returns once the queue is delivered or the linger ran out
}

/// The linger of a socket whose last messages may still be queued when its loop ends: on success,
/// the time left before the deadline (the whole role stays within --timeout; -1 without one), so
/// that closing delivers them; on failure 0, since what is queued is owed to nobody.
fn linger_at_close<T>(socket: &zmq::Socket, outcome: &Result<T, Failure>, deadline: &Deadline) -> Result<(), Failure> {
    let linger = match outcome {
        Ok(_) => deadline.remaining_ms().min(i32::MAX.into()) as i32,
        Err(_) => 0,
    };
    socket.set_linger(linger)?;
    Ok(())
}

fn run_lat_echo(args: EchoArgs) -> Result<(), Failure> {
    let deadline = Deadline::new(args.timeout);
    let context = zmq::Context::new();
    // Linger, as the source's: when the last send returns, the last reply is only queued, and with
    // linger 0 closing could drop it (it does, now and then, for 64 kB replies), leaving the ping
    // to time out. PROTOCOL.md says linger 0 here; see linger_at_close.
    let rep = socket(&context, zmq::REP, args.size, args.timeout, zmq_ms(args.timeout))?;
    emit("ready", json!({ "endpoint": bind(&rep, &args.endpoint)? }));
    let echoed = echo(&rep, args.size, args.count, &deadline);
    linger_at_close(&rep, &echoed, &deadline)?;
    echoed?;
    emit("done", json!({}));
    drop(rep);
    Ok(()) // dropping the context returns once the last reply is delivered or the linger ran out
}

/// Send back each of `count` messages (libzmq's local_lat).
fn echo(rep: &zmq::Socket, size: usize, count: u64, deadline: &Deadline) -> Result<(), Failure> {
    let mut message = zmq::Message::new();
    for done in 0..count {
        check(deadline, done)?;
        receive(rep, &mut message, size)?;
        // REP: the reply goes back to whoever sent the request, and the next receive waits for it
        // to be sent. The received message itself goes back, no copy (as local_lat does); an empty
        // one takes its place (zmq_msg_init: no allocation).
        send(rep, std::mem::replace(&mut message, zmq::Message::new()))?;
    }
    Ok(())
}

fn run_lat_ping(args: PingArgs) -> Result<(), Failure> {
    let deadline = Deadline::new(args.timeout);
    let context = zmq::Context::new();
    let req = socket(&context, zmq::REQ, args.size, args.timeout, 0)?;
    connect(&req, &args.endpoint)?;
    emit("ready", json!({}));
    let buffer = vec![0u8; args.size];
    let mut reply = zmq::Message::new();
    let started = Instant::now();
    for done in 0..args.count {
        check(&deadline, done)?;
        // REQ: strictly lockstep, one request and then its reply; a round trip is two one-way trips.
        send(&req, &buffer[..])?;
        receive(&req, &mut reply, args.size)?;
    }
    let seconds = seconds_since(started);
    let latency_us = seconds * 1e6 / (2.0 * args.count as f64);
    emit("result", json!({ "size": args.size, "count": args.count, "seconds": seconds, "latency_us": latency_us }));
    emit("done", json!({}));
    Ok(())
}

/// Both halves in one process: inproc:// is a queue between two threads of one context, carried
/// by the context itself with no network stack at all.
fn run_inproc_thr(args: InprocArgs) -> Result<(), Failure> {
    let deadline = Deadline::new(args.timeout);
    let context = zmq::Context::new();
    let pull = socket(&context, zmq::PULL, args.size, args.timeout, 0)?;
    pull.bind(INPROC).map_err(|error| Failure::new("bind", format!("cannot bind {}: {}", INPROC, error)))?;
    // inproc endpoints live in their context: the PUSH must come from the same one. (Bound before
    // it is connected, which libzmq before 4.0 required.)
    let push = socket(&context, zmq::PUSH, args.size, args.timeout, zmq_ms(args.timeout))?;
    connect(&push, INPROC)?;
    emit("ready", json!({}));
    let (size, count) = (args.size, args.count);
    let deadline = &deadline;
    let (sent, received) = thread::scope(|scope| {
        // A socket belongs to one thread at a time: the PUSH moves to the sender thread, the PULL
        // stays with this one.
        let sender = scope.spawn(move || {
            let sent = source(&push, size, count, deadline);
            linger_at_close(&push, &sent, deadline).and(sent)
        });
        let received = sink(&pull, size, count, deadline);
        let sent = sender.join().unwrap_or_else(|_| Err(Failure::new("thread", "the sender thread panicked")));
        (sent, received)
    });
    sent?;
    emit("result", received?);
    emit("done", json!({}));
    Ok(())
}
