' Security (examples/README.md, "Security: mechanisms, keys and passwords"): the security flags, the
' mechanism a role runs under and its keys, and the socket options that set it up. NetMQ 4.0.4.5
' implements NULL and CURVE; it has no PLAIN and no ZAP handler, so those are exit 2, never a silent
' downgrade. Without ZAP it has no handshake events either: a refused client sees only silence.
Imports System.CommandLine
Imports NetMQ

''' <summary>The mechanism a role runs under and its CURVE keys (Z85, already checked) when it is
''' curve, read from the flags that AddFlags puts on a role.</summary>
Public NotInheritable Class Security
    Public ReadOnly Property Mechanism As String
    Public ReadOnly Property CurveSecret As String
    Public ReadOnly Property CurvePublic As String
    Public ReadOnly Property CurveServer As String

    Private Sub New(mechanism As String, curveSecret As String, curvePublic As String, curveServer As String)
        Me.Mechanism = mechanism
        Me.CurveSecret = curveSecret
        Me.CurvePublic = curvePublic
        Me.CurveServer = curveServer
    End Sub

    ' --- the sockets -----------------------------------------------------------------------------
    ' Both sockets of a role use the same mechanism. The options are read when a connection's
    ' handshake starts, so they are set before bind or connect. Under null there is nothing to set.

    ''' <summary>A security server's socket (the chat server's REP and PUB).</summary>
    Public Sub SecureServer(socket As NetMQSocket)
        If Mechanism <> "curve" Then Return
        ' [CURVE] The server holds its own secret key (NetMQ derives the public half from it) and is
        ' the CURVE server; set before bind. Any client that knows the server's public key gets in:
        ' NetMQ has no ZAP to narrow that down to --curve-clients.
        socket.Options.CurveServer = True
        socket.Options.CurveCertificate = NetMQCertificate.CreateFromSecretKey(CurveSecret)
    End Sub

    ''' <summary>A security client's socket (the chat client's REQ and SUB).</summary>
    Public Sub SecureClient(socket As NetMQSocket)
        If Mechanism <> "curve" Then Return
        ' [CURVE] The client proves itself with its own keypair and trusts only the server whose public
        ' key it was given out of band; set before connect. A server without the matching secret key
        ' fails the handshake, and the client hears nothing (NetMQ has no handshake events).
        socket.Options.CurveCertificate = New NetMQCertificate(CurveSecret, CurvePublic)
        socket.Options.CurveServerCertificate = NetMQCertificate.FromPublicKey(CurveServer)
    End Sub

    ' --- the flags -------------------------------------------------------------------------------

    ''' <summary>The security flags of a server or a client role: --security, the CURVE keys, and the
    ''' PLAIN username and password, which NetMQ cannot use but the command line has in every language.</summary>
    Public Shared Sub AddFlags(command As Command, server As Boolean)
        Dim mechanism As New [Option](Of String)("--security") With {.DefaultValueFactory = Function(r) "null"}
        mechanism.AcceptOnlyFromAmong("null", "plain", "curve")
        command.Options.Add(mechanism)
        command.Options.Add(CurveKey("--curve-secret"))
        If server Then
            command.Options.Add(CurveKeys("--curve-clients"))
        Else
            command.Options.Add(CurveKey("--curve-public"))
            command.Options.Add(CurveKey("--curve-server"))
        End If
        command.Options.Add(Credential("--plain-user"))
        command.Options.Add(Credential("--plain-password"))
    End Sub

    ''' <summary>
    ''' The chosen mechanism and its keys. What is missing for it, or what NetMQ cannot do, is a
    ''' Usage error (exit 2): never a silent downgrade to less security.
    ''' </summary>
    Public Shared Function Read(args As ParseResult, server As Boolean) As Security
        Dim chosen = args.GetValue(Of String)("--security")
        If chosen = "plain" Then Throw New Usage("--security plain: NetMQ 4.0.4.5 does not implement the PLAIN mechanism")
        If server AndAlso chosen = "curve" AndAlso args.GetValue(Of String)("--curve-clients") IsNot Nothing Then
            Throw New Usage("--curve-clients: NetMQ 4.0.4.5 has no ZAP handler, so it cannot restrict client keys")
        End If
        Dim required =
            Function(name As String) As String
                If chosen <> "curve" Then Return Nothing
                Dim key = args.GetValue(Of String)(name)
                If key Is Nothing Then Throw New Usage($"--security curve needs {name}")
                Return key
            End Function
        If server Then Return New Security(chosen, required("--curve-secret"), Nothing, Nothing)
        Return New Security(chosen, required("--curve-secret"), required("--curve-public"), required("--curve-server"))
    End Function

    ' The Z85 alphabet (RFC 32): 85 printable characters, never ',' nor a space or a quote.
    Private Const Z85 = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"

    ''' <summary>A CURVE key is 40 characters of Z85 that encode 32 bytes: each group of 5 characters
    ''' is a number in base 85 that fits in 4 bytes.</summary>
    Private Shared Function IsCurveKey(text As String) As Boolean
        Return text.Length = 40 AndAlso text.All(Function(c) Z85.Contains(c)) AndAlso
            text.Chunk(5).All(Function(group) group.Aggregate(0UL, Function(value, c) value * 85UL + CULng(Z85.IndexOf(c))) <= UInteger.MaxValue)
    End Function

    ''' <summary>A string flag whose value must pass `valid`; otherwise `message` is the parser's error.</summary>
    Private Shared Function Checked(name As String, valid As Func(Of String, Boolean), message As String) As [Option](Of String)
        Dim opt As New [Option](Of String)(name)
        opt.Validators.Add(
            Sub(result)
                If Not valid(result.GetValueOrDefault(Of String)()) Then result.AddError($"{name} takes {message}")
            End Sub)
        Return opt
    End Function

    Private Shared Function CurveKey(name As String) As [Option](Of String)
        Return Checked(name, AddressOf IsCurveKey, "a CURVE key: 40 characters of Z85 that encode 32 bytes")
    End Function

    ''' <summary>Comma-separated CURVE keys (Z85 never uses ',').</summary>
    Private Shared Function CurveKeys(name As String) As [Option](Of String)
        Return Checked(name, Function(text) text.Split(","c).All(AddressOf IsCurveKey),
                       "CURVE keys separated by ',': 40 characters of Z85 each")
    End Function

    ''' <summary>A PLAIN username or password: 1 to 255 bytes of UTF-8 (ZMTP frames each with one length byte).</summary>
    Private Shared Function Credential(name As String) As [Option](Of String)
        Return Checked(name, Function(text) Utf8.GetByteCount(text) >= 1 AndAlso Utf8.GetByteCount(text) <= 255,
                       "1 to 255 bytes of UTF-8")
    End Function
End Class
