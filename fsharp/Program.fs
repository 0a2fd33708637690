/// btb <example> <role> [--flag value]...: one entry point for every role (examples/README.md).
module Btb.Program

open Argu
open NetMQ
open Btb.Events

[<RequireSubcommand>]
type BtbArgs =
    | [<CliPrefix(CliPrefix.None)>] Chat of ParseResults<Chat.ChatArgs>
    | [<CliPrefix(CliPrefix.None)>] Ticker of ParseResults<Ticker.TickerArgs>
    | [<CliPrefix(CliPrefix.None)>] Valuation of ParseResults<Valuation.ValuationArgs>
    | [<CliPrefix(CliPrefix.None)>] Query of ParseResults<Query.QueryArgs>
    | [<CliPrefix(CliPrefix.None)>] Perf of ParseResults<Perf.PerfArgs>
    | [<CliPrefix(CliPrefix.None)>] Desk of ParseResults<Desk.DeskArgs>

    interface IArgParserTemplate with
        member this.Usage =
            match this with
            | Chat _ -> "client/server over REQ/REP plus PUB/SUB"
            | Ticker _ -> "data distribution over PUB/SUB, with an XSUB/XPUB proxy"
            | Valuation _ -> "a PUSH/PULL pipeline with a control channel"
            | Query _ -> "a key-value engine over RFC 12/CHP: ROUTER/DEALER snapshots, PUB/SUB updates"
            | Perf _ -> "throughput and latency, as libzmq's perf tools measure them"
            | Desk _ -> "a trading desk: one process, agent threads, inproc PAIR pipes"

/// The role chosen on the command line, its flags checked; Argu raises on a bad command line.
let parse argv =
    let results = ArgumentParser.Create<BtbArgs>(programName = "btb").ParseCommandLine argv
    match results.GetSubCommand() with
    | Chat chat -> Chat.role chat
    | Ticker ticker -> Ticker.role ticker
    | Valuation valuation -> Valuation.role valuation
    | Query query -> Query.role query
    | Perf perf -> Perf.role perf
    | Desk desk -> Desk.role desk

let run role =
    try
        try
            role ()
            0
        with Failure(code, reason) ->
            emit "error" [ "code", box code; "reason", box reason ]
            1
    finally
        NetMQConfig.Cleanup(false) // do not wait for NetMQ's background threads

[<EntryPoint>]
let main argv =
    try
        run (parse argv)
    with :? ArguParseException as error ->
        if error.ErrorCode = ErrorCode.HelpText then
            printfn "%s" error.Message
            0
        else
            eprintfn "%s" error.Message
            2 // the contract's exit code for a bad command line
