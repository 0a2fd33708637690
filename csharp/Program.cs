// btb <example> <role> [--flag value]...: one entry point for every role (examples/README.md).
using System.CommandLine;
using System.Text;
using System.Text.RegularExpressions;
using NetMQ;

RootCommand root = new("Beyond the Box roles") { Chat.Command(), Ticker.Command(), Valuation.Command(), Query.Command(), Desk.Command(), Perf.Command() };
root.Options.Clear(); // no built-in --help, -h, -? nor --version: HelpSection below is the one help

if (HelpSection(args, root) is { } help)
{
    using Stream stdout = Console.OpenStandardOutput();
    stdout.Write(help);
    stdout.Flush();
    return 0;
}

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
    Contract.Emit("error", new { code = failure.Code, reason = failure.Reason });
    return 1;
}
finally
{
    NetMQConfig.Cleanup(block: false); // stop NetMQ's I/O threads so the process exits at once
}

// The help section that the command line asks for (examples/README.md, "Help: one text, six programs"),
// or null. The text is examples/help.txt, generated from the PROTOCOL.md tables by `invoke help` and
// built into the assembly (btb.csproj); it is read as Latin-1, one char per byte, and given back as
// the same bytes, so the section is printed byte for byte whatever the console's encoding.
static byte[]? HelpSection(string[] args, RootCommand root)
{
    string[] words = args.TakeWhile(arg => !arg.StartsWith('-')).ToArray();
    bool asked = words.Length <= 2
        && args.Skip(words.Length).Where((_, at) => at % 2 == 0).Any(flag => flag is "--help" or "-h");
    bool known = words.Length < 2 || root.Subcommands.Any(example => example.Name == words[0]
        && example.Subcommands.Any(role => role.Name == words[1]));
    if (!asked || !known) return null;
    using StreamReader reader = new(typeof(Program).Assembly.GetManifestResourceStream("help.txt")!, Encoding.Latin1);
    string header = Regex.Escape($"[{string.Join(' ', words.Prepend("btb"))}]");
    Match section = Regex.Match(reader.ReadToEnd(), $@"^{header}\n(.*?)(?=^\[btb[^\n]*\]$|\z)",
        RegexOptions.Multiline | RegexOptions.Singleline);
    return section.Success ? Encoding.Latin1.GetBytes(section.Groups[1].Value) : null;
}
