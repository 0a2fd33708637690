//! valuation: a PUSH/PULL pipeline with a control channel (examples/valuation/PROTOCOL.md).
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::{value_parser, Args, Subcommand};
use serde_json::{json, Value};

use crate::contract::{
    bind, connect, emit, ms_until, name, readable, readable_each, recv_if_ready, send_when_room, stop_signal, Deadline,
    Failure, MAX_NAME,
};
use crate::monitor::{self, OnOff};
use crate::ticker::{hex, is_symbol, splitmix64, GOLDEN};

const SYMBOLS: [&str; 5] = ["AAPL", "GOOG", "GOOGL", "MSFT", "IBM"];
const RESEND_BATCH: usize = 1000; // ids per resend message
/// [max size] ZMQ_MAXMSGSIZE, 256 bytes on every socket (send-only ones too: libzmq still decodes
/// what a peer sends), set before bind or connect: libzmq drops a bigger frame, and the connection of
/// its sender, before we see it, so a `ready` with a 16 MiB name never reaches the sink. The largest
/// legal frames are a 32-byte worker name, `finished` and the 8-byte ids, values and prices.
pub const MAX_MESSAGE: i64 = 256;
/// The largest |value| of an order: 1000 × 100099 cents. The sink only adds values it checked, so
/// with --count at most i64::MAX / MAX_VALUE its total fits in a signed 64-bit integer.
const MAX_VALUE: i64 = 1000 * 100_099;

#[derive(Subcommand)]
pub enum Role {
    /// collect results, re-dispatch lost orders
    Sink(SinkArgs),
    /// hand out the batch, re-send what the sink misses
    Source(SourceArgs),
    /// price orders until the batch is finished
    Worker(WorkerArgs),
    /// print the frames of one order (the test vectors)
    Encode(EncodeArgs),
}

#[derive(Args)]
pub struct SinkArgs {
    #[arg(long, default_value = "tcp://127.0.0.1:5560")]
    results: String,
    #[arg(long, default_value = "tcp://127.0.0.1:5561")]
    control: String,
    #[arg(long, default_value_t = 1, value_parser = value_parser!(u64).range(1..))]
    workers: u64,
    #[arg(long, default_value_t = 100, value_parser = value_parser!(u64).range(1..=(i64::MAX / MAX_VALUE) as u64))]
    count: u64,
    /// the source's seed: every value is checked against the order recomputed from it
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value_t = 1000, value_parser = value_parser!(u32).range(1..))]
    quiet: u32,
    #[arg(long, default_value_t = 100, value_parser = value_parser!(u32).range(1..))]
    heartbeat: u32,
    #[arg(long, default_value_t = 0)]
    timeout: u32,
    #[arg(long, value_enum, default_value_t = OnOff::Off)]
    monitor: OnOff,
}

#[derive(Args)]
pub struct SourceArgs {
    #[arg(long, default_value = "tcp://127.0.0.1:5562")]
    orders: String,
    #[arg(long, default_value = "tcp://127.0.0.1:5561")]
    control: String,
    #[arg(long, default_value_t = 100, value_parser = value_parser!(u64).range(1..))]
    count: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value_t = 30000)]
    timeout: u32,
    #[arg(long, value_enum, default_value_t = OnOff::Off)]
    monitor: OnOff,
}

#[derive(Args)]
pub struct WorkerArgs {
    #[arg(long, default_value = "tcp://127.0.0.1:5562")]
    orders: String,
    #[arg(long, default_value = "tcp://127.0.0.1:5560")]
    results: String,
    #[arg(long, default_value = "tcp://127.0.0.1:5561")]
    control: String,
    #[arg(long, value_parser = name)]
    name: String,
    #[arg(long, default_value_t = 0)]
    rate: u32,
    #[arg(long, default_value_t = 30000)]
    timeout: u32,
    #[arg(long, value_enum, default_value_t = OnOff::Off)]
    monitor: OnOff,
}

#[derive(Args)]
pub struct EncodeArgs {
    #[arg(long)]
    seed: u64,
    #[arg(long)]
    id: u64,
}

pub fn run(role: Role) -> Result<(), Failure> {
    match role {
        Role::Sink(args) => run_sink(args),
        Role::Source(args) => run_source(args),
        Role::Worker(args) => run_worker(args),
        Role::Encode(args) => run_encode(args),
    }
}

type Rejected = (&'static str, String); // (code, reason)

/// A control message that is the one-frame state `state`.
fn is_state(message: &[Vec<u8>], state: &[u8]) -> bool {
    matches!(message, [only] if only.as_slice() == state)
}

/// The 8 bytes of a 64-bit frame, or None if it has another size.
fn eight(frame: &[u8]) -> Option<[u8; 8]> {
    <[u8; 8]>::try_from(frame).ok()
}

// --- orders: a generator anyone can recompute -------------------------------------------------

struct Order {
    symbol: &'static str,
    side: u8, // b'B' or b'S'
    quantity: u32,
    cents: i64,
}

/// Order `id` of the batch of `seed`, with unsigned 64-bit arithmetic modulo 2^64.
fn order(seed: u64, id: u64) -> Order {
    let z1 = splitmix64(seed ^ id.wrapping_mul(GOLDEN));
    let z2 = splitmix64(z1);
    let z3 = splitmix64(z2);
    Order {
        symbol: SYMBOLS[(z1 % 5) as usize],
        side: if z2 % 2 == 0 { b'B' } else { b'S' },
        quantity: 1 + ((z2 >> 1) % 1000) as u32,
        cents: 100 + (z3 % 100_000) as i64,
    }
}

pub fn order_frames(seed: u64, id: u64) -> [Vec<u8>; 5] {
    let Order { symbol, side, quantity, cents } = order(seed, id);
    // to_be_bytes: big-endian, network order; u64 id, u32 quantity, i64 cents.
    [
        id.to_be_bytes().to_vec(),
        symbol.as_bytes().to_vec(),
        vec![side],
        quantity.to_be_bytes().to_vec(),
        cents.to_be_bytes().to_vec(),
    ]
}

/// quantity × cents, negated for a sell. The worker checks the ranges of an order before it prices
/// it, so this never overflows (at most MAX_VALUE).
fn value(side: u8, quantity: u32, cents: i64) -> i64 {
    let amount = i64::from(quantity) * cents;
    if side == b'B' {
        amount
    } else {
        -amount
    }
}

fn run_encode(args: EncodeArgs) -> Result<(), Failure> {
    let frames: Vec<String> = order_frames(args.seed, args.id).iter().map(|frame| hex(frame)).collect();
    let Order { side, quantity, cents, .. } = order(args.seed, args.id);
    let value = value(side, quantity, cents);
    emit("encoded", json!({ "frames": frames, "value": value }));
    emit("done", json!({}));
    Ok(())
}

// --- sink ------------------------------------------------------------------------------------

/// A worker name: 1 to 32 bytes of UTF-8, or the reason it is not one (which never echoes the
/// bytes the peer sent).
fn worker_name(frame: &[u8]) -> Result<&str, String> {
    if !(1..=MAX_NAME).contains(&frame.len()) {
        return Err(format!("a worker name of {} bytes, not 1 to {}", frame.len(), MAX_NAME));
    }
    std::str::from_utf8(frame).map_err(|_| "the worker name is not UTF-8".to_string())
}

/// The name of a well-formed `ready`: [ready, name], and nothing else.
fn check_ready(frames: &[Vec<u8>]) -> Result<&str, Rejected> {
    match frames {
        [_, name] => worker_name(name).map_err(|reason| ("malformed-ready", reason)),
        _ => Err(("malformed-ready", format!("a ready has 2 frames, got {}", frames.len()))),
    }
}

/// (worker, id, value) of a result that is what the order of that id is worth, or its first broken
/// rule. A worker is trusted with nothing: the value is recomputed from the seed and the id.
fn check_result(frames: &[Vec<u8>], count: u64, seed: u64) -> Result<(&str, u64, i64), Rejected> {
    let sizes = || frames.iter().map(Vec::len).collect::<Vec<usize>>();
    let (worker, id, amount) = match frames {
        [kind, worker, id, amount] if kind.as_slice() == b"result" => (worker, id, amount),
        _ => return Err(("malformed-result", format!("not [result, name, id, value]: {:?} bytes", sizes()))),
    };
    let worker = worker_name(worker).map_err(|reason| ("malformed-result", reason))?;
    let (id, amount) = match (eight(id), eight(amount)) {
        (Some(id), Some(amount)) => (u64::from_be_bytes(id), i64::from_be_bytes(amount)),
        _ => return Err(("malformed-result", format!("id and value are not 8 bytes each: {:?} bytes", sizes()))),
    };
    if !(1..=count).contains(&id) {
        return Err(("unknown-id", format!("id {} is not in 1..{}", id, count)));
    }
    let Order { side, quantity, cents, .. } = order(seed, id);
    let expected = value(side, quantity, cents);
    if amount != expected {
        return Err(("wrong-value", format!("order {} from {}: value {}, expected {}", id, worker, amount, expected)));
    }
    Ok((worker, id, amount))
}

/// A `ready` as the sink takes it: a new worker name is reported as `worker` and remembered in
/// `ready`; a malformed one is an `error` and not a worker (it does not count toward --workers).
/// `out` reports an event: `emit` here, the pipe in the desk's valuation agent.
pub fn on_ready(frames: &[Vec<u8>], ready: &mut BTreeSet<String>, out: &mut dyn FnMut(&str, Value)) {
    match check_ready(frames) {
        Err((code, reason)) => out("error", json!({ "code": code, "reason": reason })),
        Ok(worker) if !ready.contains(worker) => {
            out("worker", json!({ "name": worker }));
            ready.insert(worker.to_string());
        }
        Ok(_) => {}
    }
}

/// The sink's count of one batch of orders 1 to `count`: every result checked, each id counted once.
pub struct Tally {
    count: u64,
    seed: u64,
    values: HashMap<u64, i64>,      // id -> value counted
    total: i64,                     // the sum of `values`, each checked: see MAX_VALUE
    priced: BTreeMap<String, u64>,  // worker -> results counted
    resent: BTreeSet<u64>,          // every id ever re-dispatched
}

impl Tally {
    pub fn new(count: u64, seed: u64) -> Self {
        let (values, priced, resent) = (HashMap::new(), BTreeMap::new(), BTreeSet::new());
        Tally { count, seed, values, total: 0, priced, resent }
    }

    /// Check one result and report it (`result`, `late-duplicate` or `error`); true when it was
    /// counted. A result that is not counted leaves its id missing: `resend` asks for it again.
    pub fn on_result(&mut self, frames: &[Vec<u8>], out: &mut dyn FnMut(&str, Value)) -> bool {
        match check_result(frames, self.count, self.seed) {
            Err((code, reason)) => out("error", json!({ "code": code, "reason": reason })),
            Ok((worker, id, _)) if self.values.contains_key(&id) && self.resent.contains(&id) => {
                // We asked for it twice: the first worker was slow, not dead.
                out("late-duplicate", json!({ "id": id, "worker": worker }));
            }
            Ok((worker, id, _)) if self.values.contains_key(&id) => {
                let reason = format!("a second result for order {}, from {}", id, worker);
                out("error", json!({ "code": "duplicate", "reason": reason }));
            }
            Ok((worker, id, amount)) => {
                self.values.insert(id, amount);
                self.total += amount;
                *self.priced.entry(worker.to_string()).or_insert(0) += 1;
                out("result", json!({ "id": id, "worker": worker }));
                return true;
            }
        }
        false
    }

    pub fn counted(&self) -> u64 {
        self.values.len() as u64
    }

    pub fn total(&self) -> i64 {
        self.total
    }

    pub fn is_complete(&self) -> bool {
        self.counted() == self.count
    }

    /// The fields of `complete`: the total, the orders each worker priced, every id re-dispatched.
    pub fn complete(&self) -> Value {
        let resent: Vec<u64> = self.resent.iter().copied().collect(); // ascending
        json!({ "total": self.total, "workers": self.priced, "resent": resent })
    }

    /// Every missing id, ascending; from now on each counts as re-dispatched.
    pub fn resend(&mut self) -> Vec<u64> {
        let missing: Vec<u64> = (1..=self.count).filter(|id| !self.values.contains_key(id)).collect();
        self.resent.extend(&missing);
        missing
    }
}

fn run_sink(args: SinkArgs) -> Result<(), Failure> {
    let stop = stop_signal()?;
    let deadline = Deadline::new(args.timeout);
    let context = zmq::Context::new();
    // [PULL] fair-queues readiness and results from every connected worker, taking from each in
    // turn: no one worker can starve the rest.
    let results = context.socket(zmq::PULL)?;
    // [PUB] sends the control channel to every subscriber (the source and the workers); it never
    // blocks, and drops for a subscriber not connected yet, or past its high-water mark.
    let control = context.socket(zmq::PUB)?;
    for socket in [&results, &control] {
        // [linger] 0: the sink leaves only when told to, and what it still queues then (a state
        // the heartbeat repeats anyway) is needed by nobody; closing drops it at once.
        socket.set_linger(0)?;
        socket.set_maxmsgsize(MAX_MESSAGE)?;
    }
    monitor::attach(&context, &results, "results", args.monitor)?;
    monitor::attach(&context, &control, "control", args.monitor)?;
    let results_bound = bind(&results, &args.results)?;
    let control_bound = bind(&control, &args.control)?;
    emit("ready", json!({ "results": results_bound, "control": control_bound }));

    let mut state: &[u8] = b"waiting";
    let mut ready: BTreeSet<String> = BTreeSet::new(); // names of the workers that said ready
    let mut tally = Tally::new(args.count, args.seed);
    let mut next_beat = Instant::now();
    let mut quiet_since = Instant::now();
    let quiet = Duration::from_millis(args.quiet.into());

    while !stop.load(Ordering::SeqCst) {
        if deadline.expired() {
            let reason = format!("still running after {} ms with {} results", args.timeout, tally.counted());
            return Err(Failure::new("timeout", reason));
        }
        // [poll] The poll is the only wait: for a message, or until the next heartbeat is due (never
        // past the deadline); then a receive that never blocks. POLLIN is a hint, EINTR no message.
        let waiting = readable(&results, deadline.cap(ms_until(next_beat)))?;
        // Every frame of one message, or None: nothing after all.
        let message = if waiting { recv_if_ready(&results)? } else { None };
        if let Some(frames) = message {
            if frames[0] == b"ready" {
                on_ready(&frames, &mut ready, &mut emit);
                if state == b"waiting" && ready.len() as u64 >= args.workers {
                    // At once, not at the next heartbeat. Every worker heard a control message
                    // before it said ready, so its SUB is connected and cannot miss this one.
                    state = b"go";
                    control.send(state, 0)?;
                    emit("started", json!({ "workers": ready.len() }));
                    quiet_since = Instant::now();
                }
            } else if tally.on_result(&frames, &mut emit) {
                quiet_since = Instant::now();
                if tally.is_complete() {
                    state = b"finished";
                    control.send(state, 0)?; // at once; the heartbeat repeats it
                    emit("complete", tally.complete());
                }
            }
        }
        let now = Instant::now();
        if state == b"go" && now.duration_since(quiet_since) >= quiet {
            // Nothing is acknowledged in PUSH/PULL: orders queued for a worker that died are gone
            // without a trace. Only the sink can see what is missing, so it asks the source again.
            let missing = tally.resend();
            for batch in missing.chunks(RESEND_BATCH) {
                let ids = batch.iter().map(|id| id.to_be_bytes().to_vec());
                control.send_multipart(std::iter::once(b"resend".to_vec()).chain(ids), 0)?;
            }
            emit("resend", json!({ "ids": missing }));
            quiet_since = now;
        }
        if now >= next_beat {
            // [slow joiner] A subscriber connected late missed every state published before its
            // subscription arrived: the state is level-triggered, repeated every heartbeat, so it
            // learns it anyway. A worker says ready only after its first control message.
            // [HWM] At 1000 messages queued for one subscriber (the default), PUB drops for it
            // instead of blocking: a stalled worker costs the sink nothing, and the next heartbeat
            // says the state again.
            control.send(state, 0)?;
            next_beat = now + Duration::from_millis(args.heartbeat.into());
        }
    }
    emit("done", json!({ "orders": tally.counted(), "total": tally.total() }));
    Ok(()) // dropping the sockets and then the context closes them; linger 0: nothing waits
}

// --- source ----------------------------------------------------------------------------------

fn run_source(args: SourceArgs) -> Result<(), Failure> {
    let deadline = Deadline::new(args.timeout);
    let context = zmq::Context::new();
    // [PUSH] deals each order to one connected worker, round-robin, and never drops one. With no
    // worker connected, or every worker's queue at its high-water mark (mute), a send has to wait:
    // send_when_room polls for room (POLLOUT), never past the deadline.
    let orders = context.socket(zmq::PUSH)?;
    // [SUB] subscribed to "", every control message (states and resends), before it connects.
    let control = context.socket(zmq::SUB)?;
    for socket in [&orders, &control] {
        socket.set_linger(0)?; // we leave only on `finished`: nothing we sent is still needed
        socket.set_maxmsgsize(MAX_MESSAGE)?; // a PUSH sends only, but libzmq still decodes what comes in
    }
    control.set_subscribe(b"")?;
    monitor::attach(&context, &orders, "orders", args.monitor)?;
    monitor::attach(&context, &control, "control", args.monitor)?;
    let bound = bind(&orders, &args.orders)?;
    connect(&control, &args.control)?;
    emit("ready", json!({ "orders": bound }));

    // The next control message, or None when a second passed without one.
    let next_control = || -> Result<Option<Vec<Vec<u8>>>, Failure> {
        if deadline.expired() {
            return Err(Failure::new("timeout", format!("not finished after {} ms", args.timeout)));
        }
        if !readable(&control, deadline.cap(1000))? {
            return Ok(None);
        }
        recv_if_ready(&control) // None: nothing after all
    };
    let send = |id: u64| send_when_room(&orders, &order_frames(args.seed, id), &deadline, &format!("order {}", id));

    // The state is repeated every heartbeat: however late our SUB connected, `go` comes.
    while !matches!(next_control()?, Some(message) if is_state(&message, b"go")) {}
    for id in 1..=args.count {
        send(id)?;
    }
    emit("sent", json!({ "orders": args.count }));
    let mut sent = args.count;
    loop {
        let message = match next_control()? {
            Some(message) => message,
            None => continue,
        };
        if is_state(&message, b"finished") {
            break;
        }
        if message[0] == b"resend" {
            // The ids of our orders, 8 bytes each; anything else is no order of ours: ignored.
            let ids: Vec<u64> = message[1..].iter().filter_map(|frame| eight(frame)).map(u64::from_be_bytes)
                .filter(|id| (1..=args.count).contains(id)).collect();
            for &id in &ids {
                send(id)?; // the same bytes again: the generator recomputes them
            }
            sent += ids.len() as u64;
            emit("resent", json!({ "ids": ids }));
        }
    }
    emit("done", json!({ "sent": sent }));
    Ok(())
}

// --- worker ----------------------------------------------------------------------------------

/// (id, value) of a well-formed order, or its first broken rule.
fn check_order(frames: &[Vec<u8>]) -> Result<(u64, i64), Rejected> {
    // [multipart] An order's 5 frames arrive whole or not at all, but how many came is the
    // sender's choice: the count and every size are checked before anything is read.
    let sizes: Vec<usize> = frames.iter().map(Vec::len).collect();
    let (id, symbol, side, quantity, cents) = match frames {
        [id, symbol, side, quantity, cents] if (1..=8).contains(&symbol.len()) && side.len() == 1 => {
            match (eight(id), <[u8; 4]>::try_from(quantity.as_slice()).ok(), eight(cents)) {
                (Some(id), Some(quantity), Some(cents)) => (id, symbol, side[0], quantity, cents),
                _ => return Err(("malformed-order", format!("frame sizes {:?}, expected [8, 1-8, 1, 4, 8]", sizes))),
            }
        }
        _ => return Err(("malformed-order", format!("frame sizes {:?}, expected [8, 1-8, 1, 4, 8]", sizes))),
    };
    if !is_symbol(symbol) || !(side == b'B' || side == b'S') {
        let reason = format!("symbol {} or side {}", symbol.escape_ascii(), [side].escape_ascii());
        return Err(("malformed-order", reason));
    }
    let (id, quantity, cents) = (u64::from_be_bytes(id), u32::from_be_bytes(quantity), i64::from_be_bytes(cents));
    if !(1..=1000).contains(&quantity) || !(100..=100_099).contains(&cents) {
        // Within the table's ranges, no value can overflow.
        return Err(("malformed-order", format!("quantity {} or price {} cents out of range", quantity, cents)));
    }
    Ok((id, value(side, quantity, cents)))
}

fn run_worker(args: WorkerArgs) -> Result<(), Failure> {
    let deadline = Deadline::new(args.timeout);
    let context = zmq::Context::new();
    // PULL takes orders from the source; PUSH hands readiness and results to the sink (blocking at
    // its high-water mark, never dropping: see send_when_room); SUB hears the control channel.
    let orders = context.socket(zmq::PULL)?;
    let results = context.socket(zmq::PUSH)?;
    let control = context.socket(zmq::SUB)?;
    for socket in [&orders, &results, &control] {
        // We leave only on `finished`, once the sink has every result. If we die instead, the
        // orders queued for us are lost, whatever the linger: the sink has them re-sent.
        socket.set_linger(0)?;
        socket.set_maxmsgsize(MAX_MESSAGE)?;
    }
    control.set_subscribe(b"")?;
    for (socket, flag) in [(&orders, "orders"), (&results, "results"), (&control, "control")] {
        monitor::attach(&context, socket, flag, args.monitor)?;
    }
    // PULL first: it should be connected long before the source deals the batch.
    connect(&orders, &args.orders)?;
    connect(&results, &args.results)?;
    connect(&control, &args.control)?;

    // Slow joiner: once one control message has arrived, our subscription is live and no later
    // one can be missed.
    let first = loop {
        if deadline.expired() {
            return Err(Failure::new("timeout", "no control message from the sink"));
        }
        if readable(&control, deadline.cap(1000))? {
            if let Some(message) = recv_if_ready(&control)? {
                break message;
            }
        }
    };
    let mut finished = is_state(&first, b"finished");
    let hello = [&b"ready"[..], args.name.as_bytes()];
    send_when_room(&results, &hello, &deadline, "ready")?;
    emit("ready", json!({ "name": args.name }));

    let pause = (args.rate > 0).then(|| Duration::from_secs(1) / args.rate); // --rate: between orders
    let mut priced = 0u64;
    let mut next_order = Instant::now();
    while !finished {
        if deadline.expired() {
            return Err(Failure::new("timeout", format!("not finished after {} ms", args.timeout)));
        }
        let (order_ready, control_ready) = if pause.is_some() && Instant::now() < next_order {
            // Throttled: until the next order is due, listen to the control channel only. Orders
            // wait in our queue meanwhile (and, once it is full, in the source's queue for us).
            (false, readable(&control, deadline.cap(ms_until(next_order).max(1)))?)
        } else {
            // One poll for both sockets: whichever has a message first wakes us, no busy loop.
            let ready = readable_each(&[&orders, &control], deadline.cap(1000))?;
            (ready[0], ready[1])
        };
        // An order; None: nothing after all.
        let order = if order_ready { recv_if_ready(&orders)? } else { None };
        match order.as_deref().map(check_order) {
            None => {}
            Some(Err((code, reason))) => emit("error", json!({ "code": code, "reason": reason })), // dropped
            Some(Ok((id, value))) => {
                let result = [&b"result"[..], args.name.as_bytes(), &id.to_be_bytes(), &value.to_be_bytes()];
                send_when_room(&results, &result, &deadline, &format!("the result of order {}", id))?;
                priced += 1;
                emit("priced", json!({ "id": id }));
                if let Some(pause) = pause {
                    next_order = Instant::now() + pause;
                }
            }
        }
        // States and resends; resends are the source's business.
        let message = if control_ready { recv_if_ready(&control)? } else { None };
        if let Some(message) = message {
            finished = is_state(&message, b"finished");
            if is_state(&message, b"waiting") {
                // A sink waiting for its workers, a restarted one too: ready again.
                send_when_room(&results, &hello, &deadline, "ready")?;
            }
        }
    }
    emit("done", json!({ "priced": priced }));
    Ok(())
}
