' btb <example> <role> [--flag value]...: one entry point for every role (examples/README.md).
Imports System.CommandLine
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
            NetMQConfig.Cleanup(False)  ' do not wait for NetMQ's background threads at exit
        End Try
    End Function
End Module
