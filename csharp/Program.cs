// btb <example> <role> [--flag value]...: one entry point for every role (examples/README.md).
using System.CommandLine;
using NetMQ;

RootCommand root = new("Beyond the Box roles") { Chat.Command(), Ticker.Command(), Valuation.Command(), Query.Command(), Desk.Command(), Perf.Command() };

// No @file response files: a handle or a Z85 key may well start with "@".
ParseResult parsed = root.Parse(args, new ParserConfiguration { ResponseFileTokenReplacer = null });
if (parsed.Errors.Count > 0)
{
    // A bad command line exits 2, as the contract says (System.CommandLine's own default is 1).
    foreach (var error in parsed.Errors) Console.Error.WriteLine($"btb: {error.Message}");
    return 2;
}
try
{
    // No default exception handler: a Failure reaches the catch below.
    return parsed.Invoke(new InvocationConfiguration { EnableDefaultExceptionHandler = false });
}
catch (Usage usage)
{
    Console.Error.WriteLine($"btb: {usage.Message}");
    return 2;
}
catch (Failure failure)
{
    Events.Emit("error", new { code = failure.Code, reason = failure.Reason });
    return 1;
}
finally
{
    NetMQConfig.Cleanup(block: false); // stop NetMQ's I/O threads so the process exits at once
}
