/// btb <example> <role> [--flag value]...: one entry point for every role (examples/README.md).
module Btb.Program

open System
open System.IO
open System.Reflection
open System.Text
open System.Text.RegularExpressions
open Argu
open NetMQ
open Btb.Contract

// No help flags at any level: helpSection answers --help, and a --help in a value's place is a value.
[<RequireSubcommand; DisableHelpFlags>]
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

/// The section of `btb --help` this command line asks for, if it asks (examples/README.md, "Help: one
/// text, six programs"). The text is examples/help.txt, generated from the PROTOCOL.md tables by
/// `invoke help` and built into the assembly (btb.fsproj's EmbeddedResource); every language prints
/// the same bytes, so they are read as Latin-1 (one char per byte) and written back as bytes,
/// never through the console's encoding.
let helpSection (argv: string[]) : byte[] option =
    let words = argv |> Array.takeWhile (fun arg -> not (arg.StartsWith "-"))
    let asked = // at a flag's place, never at its value's
        [ words.Length .. 2 .. argv.Length - 1 ] |> List.exists (fun i -> argv[i] = "--help" || argv[i] = "-h")
    let named (parser: ArgumentParser) word = parser.ParentInfo.Value.CommandLineNames.Value.Head = word
    let implemented =
        match words with
        | [| example; role |] ->
            ArgumentParser.Create<BtbArgs>().GetSubCommandParsers()
            |> List.exists (fun e -> named e example && e.GetSubCommandParsers() |> List.exists (fun r -> named r role))
        | _ -> words.Length < 2
    if not (asked && implemented) then
        None
    else
        use resource = Assembly.GetExecutingAssembly().GetManifestResourceStream "help.txt"
        use copy = new MemoryStream()
        resource.CopyTo copy
        let text = Encoding.Latin1.GetString(copy.ToArray())
        let headers = Regex.Matches(text, @"^\[btb( [a-z-]+){0,2}\]$", RegexOptions.Multiline) |> Seq.toArray
        let header = "[" + String.concat " " (Array.append [| "btb" |] words) + "]"
        headers
        |> Array.tryFindIndex (fun m -> m.Value = header)
        |> Option.map (fun i ->
            let start = headers[i].Index + headers[i].Length + 1
            let stop = if i + 1 < headers.Length then headers[i + 1].Index else text.Length
            Encoding.Latin1.GetBytes(text.Substring(start, stop - start)))

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
    match helpSection argv with
    | Some section ->
        use stdout = Console.OpenStandardOutput()
        stdout.Write(section, 0, section.Length)
        stdout.Flush()
        0
    | None ->
        try
            run (parse argv)
        with :? ArguParseException as error ->
            eprintfn "%s" error.Message
            2 // the contract's exit code for a bad command line
