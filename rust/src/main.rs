//! btb <example> <role> [--flag value]...: one entry point for every role (examples/README.md).
mod chat;
mod contract;
mod desk;
mod monitor;
mod perf;
mod query;
mod security;
mod ticker;
mod valuation;
mod web;

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;

use clap::{CommandFactory, Parser};
use serde_json::json;

use contract::emit;

/// Beyond the Box roles
#[derive(Parser)]
#[command(name = "btb", disable_help_flag = true, disable_help_subcommand = true)] // global: every level
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

/// The help text: examples/help.txt, generated from the PROTOCOL.md tables by `invoke help`, the
/// same file in every language. A section is printed as the file's bytes, unchanged, so that every
/// language prints the same bytes whatever the locale (examples/README.md, "Help: one text, six
/// programs").
const HELP: &[u8] = include_bytes!("../../examples/help.txt");

/// The section of HELP that `args` (btb's own, after the program name) ask for, if any: the leading
/// words name it, and `--help` or `-h` stands where a flag may (never as a flag's value).
fn help_requested(args: &[OsString]) -> Option<&'static [u8]> {
    let words: Vec<&[u8]> = args.iter().map(|arg| arg.as_bytes()).take_while(|arg| !arg.starts_with(b"-")).collect();
    let asked = args.iter().skip(words.len()).step_by(2).any(|arg| arg == "--help" || arg == "-h");
    if !asked || words.len() > 2 {
        return None;
    }
    if let [example, role] = words[..] {
        let (example, role) = (std::str::from_utf8(example).ok()?, std::str::from_utf8(role).ok()?);
        Example::command().find_subcommand(example)?.find_subcommand(role)?; // a role we implement
    }
    let mut header = b"[btb".to_vec();
    for word in &words {
        header.push(b' ');
        header.extend_from_slice(word);
    }
    header.push(b']');
    fn text(line: &[u8]) -> &[u8] {
        line.strip_suffix(b"\n").unwrap_or(line)
    }
    let mut lines = HELP.split_inclusive(|&byte| byte == b'\n');
    let mut start = 0;
    while let Some(line) = lines.next() {
        start += line.len();
        if text(line) == header {
            let is_header = |line: &&[u8]| text(line).starts_with(b"[btb") && text(line).ends_with(b"]");
            let length: usize = lines.take_while(|line| !is_header(line)).map(<[u8]>::len).sum();
            return Some(&HELP[start..start + length]);
        }
    }
    None
}

/// `--flag value` as `--flag=value`: every flag of the contract takes a value, and the argument after
/// a flag is its value even when it begins with "-" (a Z85 key, or a name like `--help`), which
/// clap would otherwise take for a flag.
fn attach_values(mut args: impl Iterator<Item = OsString>) -> Vec<OsString> {
    let mut out = Vec::new();
    while let Some(mut arg) = args.next() {
        let bytes = arg.as_bytes();
        if bytes.starts_with(b"--") && bytes.len() > 2 && !bytes.contains(&b'=') {
            if let Some(value) = args.next() {
                arg.push("=");
                arg.push(value); // a flag with no value left stays as it is: clap says it needs one
            }
        }
        out.push(arg);
    }
    out
}

fn main() {
    if let Some(section) = help_requested(&std::env::args_os().skip(1).collect::<Vec<_>>()) {
        let mut stdout = std::io::stdout().lock();
        let written = stdout.write_all(section).and_then(|()| stdout.flush());
        std::process::exit(if written.is_ok() { 0 } else { 1 });
    }
    // Exits 2 on a bad command line, as the contract says.
    let result = match Example::parse_from(attach_values(std::env::args_os())) {
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
