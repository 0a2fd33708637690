//! btb <example> <role> [--flag value]...: one entry point for every role (examples/README.md).
mod chat;
mod desk;
mod events;
mod perf;
mod query;
mod ticker;
mod valuation;
mod web;

use clap::Parser;
use serde_json::json;

use events::emit;

/// Beyond the Box roles
#[derive(Parser)]
#[command(name = "btb")]
enum Example {
    /// a roster server over REQ/REP with a PUB broadcast channel
    #[command(subcommand)]
    Chat(chat::Role),
    /// data distribution over PUB/SUB, with an XSUB/XPUB proxy
    #[command(subcommand)]
    Ticker(ticker::Role),
    /// a PUSH/PULL pipeline with a control channel
    #[command(subcommand)]
    Valuation(valuation::Role),
    /// a key-value engine over RFC 12/CHP: ROUTER snapshots, XPUB updates, SUB writes
    #[command(subcommand)]
    Query(query::Role),
    /// throughput and latency, as libzmq's perf tools measure them
    #[command(subcommand)]
    Perf(perf::Role),
    /// a trading desk: one process, one thread per agent, inproc PAIR pipes
    #[command(subcommand)]
    Desk(desk::Role),
}

fn main() {
    // Exits 2 on a bad command line, as the contract says.
    let result = match Example::parse() {
        Example::Chat(role) => chat::run(role),
        Example::Ticker(role) => ticker::run(role),
        Example::Valuation(role) => valuation::run(role),
        Example::Query(role) => query::run(role),
        Example::Perf(role) => perf::run(role),
        Example::Desk(role) => desk::run(role),
    };
    if let Err(failure) = result {
        emit("error", json!({ "code": failure.code, "reason": failure.reason }));
        std::process::exit(1);
    }
}
