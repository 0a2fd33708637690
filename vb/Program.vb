' btb <example> <role> [--flag value]...: one entry point for every role (examples/README.md).
Imports System.CommandLine
Imports System.IO
Imports System.Text
Imports System.Text.RegularExpressions
Imports NetMQ

Public Module Program
    Public Function Main(argv As String()) As Integer
        Dim root As New RootCommand("Beyond the Box roles") From {
            Chat.Roles(),
            Ticker.Roles(),
            Valuation.Roles(),
            Query.Roles(),
            Desk.Roles(),
            Perf.Roles()
        }
        root.Options.Clear()  ' no built-in --help, -h, -? nor --version: HelpSection below is the one help

        Dim help = HelpSection(argv, root)
        If help IsNot Nothing Then
            Using stdout = Console.OpenStandardOutput()
                stdout.Write(help)
                stdout.Flush()
            End Using
            Return 0
        End If

        ' No @file response files: a handle may well start with "@".
        Dim args = root.Parse(argv, New ParserConfiguration With {.ResponseFileTokenReplacer = Nothing})
        If args.Errors.Count > 0 Then  ' a bad command line exits 2, as the contract says
            For Each problem In args.Errors
                Console.Error.WriteLine($"btb: {problem.Message}")
            Next
            Return 2
        End If
        Try
            Return args.Invoke(New InvocationConfiguration With {.EnableDefaultExceptionHandler = False})
        Catch problem As Usage
            Console.Error.WriteLine($"btb: {problem.Message}")
            Return 2
        Catch failure As Failure
            Emit("error", ("code", failure.Code), ("reason", failure.Reason))
            Return 1
        Finally
            NetMQConfig.Cleanup(block:=False)  ' stop NetMQ's I/O threads so the process exits at once
        End Try
    End Function

    ''' <summary>The help section that the command line asks for (examples/README.md, "Help: one text, six
    ''' programs"), or Nothing. The text is examples/help.txt, generated from the PROTOCOL.md tables by
    ''' `invoke help` and built into the program (btb.vbproj); it is read as Latin-1, one char per byte, and
    ''' given back as the same bytes, so the section is printed byte for byte whatever the console's encoding.</summary>
    Function HelpSection(args As String(), root As RootCommand) As Byte()
        Dim words = args.TakeWhile(Function(arg) Not arg.StartsWith("-"c)).ToArray()
        Dim asked = words.Length <= 2 AndAlso args.Skip(words.Length).Where(Function(flag, at) at Mod 2 = 0).
            Any(Function(flag) flag = "--help" OrElse flag = "-h")
        Dim known = words.Length < 2 OrElse root.Subcommands.Any(Function(example) example.Name = words(0) AndAlso
            example.Subcommands.Any(Function(role) role.Name = words(1)))
        If Not asked OrElse Not known Then Return Nothing
        Using reader As New StreamReader(GetType(Program).Assembly.GetManifestResourceStream("help.txt"), Encoding.Latin1)
            Dim header = Regex.Escape($"[{String.Join(" "c, words.Prepend("btb"))}]")
            Dim section = Regex.Match(reader.ReadToEnd(), $"^{header}\n(.*?)(?=^\[btb[^\n]*\]$|\z)",
                RegexOptions.Multiline Or RegexOptions.Singleline)
            Return If(section.Success, Encoding.Latin1.GetBytes(section.Groups(1).Value), Nothing)
        End Using
    End Function
End Module
