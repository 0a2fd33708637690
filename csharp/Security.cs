// ZMTP security for any example that allows it (examples/README.md, "Security"): the security flags,
// and the socket options of the NULL and CURVE mechanisms. NetMQ 4.0.4.5 implements NULL and CURVE
// only: it has no PLAIN mechanism, no ZAP handler (RFC 27) to choose which clients may connect, and
// no handshake events on its socket monitor. So a role here answers `--security plain` and
// `--curve-clients` with exit 2 (never a silent downgrade), and a client refused by the server hears
// nothing and ends with `timeout`.
using System.CommandLine;
using System.Text;
using NetMQ;

/// <summary>The mechanism a role runs under and its credentials, from the security flags of the launch
/// contract. Keys are Z85 text, already checked.</summary>
sealed record Credentials(string Mechanism, string? CurveSecret, string? CurvePublic, string? CurveServer);

/// <summary>The mechanism's socket options. Every socket of a role uses the same mechanism. The options
/// are read when a connection's handshake starts, so they are set before bind or connect; under
/// <c>null</c> there is nothing to set.</summary>
static class Security
{
    /// <summary>Make <paramref name="socket"/> a security server: under CURVE, it holds the server's
    /// keypair.</summary>
    public static void SecureServer(NetMQSocket socket, Credentials credentials)
    {
        if (credentials.Mechanism != "curve") return;
        // [CURVE] The server holds its own secret key (NetMQ derives the public half from it), set
        // before bind: a client must know the matching public key. Without ZAP, any client that knows
        // it gets in. Every frame then travels encrypted.
        socket.Options.CurveServer = true;
        socket.Options.CurveCertificate = NetMQCertificate.CreateFromSecretKey(credentials.CurveSecret!);
    }

    /// <summary>Make <paramref name="socket"/> a security client of the server whose public key it was
    /// given.</summary>
    public static void SecureClient(NetMQSocket socket, Credentials credentials)
    {
        if (credentials.Mechanism != "curve") return;
        // [CURVE] The client proves itself with its own keypair and trusts only the server whose
        // public key it learnt out of band (--curve-server): a server without the matching secret
        // key fails the handshake. Set before connect, since the handshake reads them.
        socket.Options.CurveCertificate = new NetMQCertificate(credentials.CurveSecret!, credentials.CurvePublic!);
        socket.Options.CurveServerCertificate = NetMQCertificate.FromPublicKey(credentials.CurveServer!);
    }
}

/// <summary>The security flags of a server or a client role: <c>--security</c>, the CURVE keys and the
/// PLAIN username and password. The parser checks each value; <see cref="Read"/> checks that the
/// chosen mechanism has what it needs, and that NetMQ can do it at all.</summary>
sealed class SecurityFlags
{
    // The Z85 alphabet (RFC 32): 85 printable characters, never ',' nor a space or a quote.
    const string Z85 = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";

    readonly bool server;
    readonly Option<string> mechanism = new("--security") { DefaultValueFactory = _ => "null" };
    readonly Option<string> curveSecret = CurveKey("--curve-secret");
    readonly Option<string> curvePublic = CurveKey("--curve-public"); // client
    readonly Option<string> curveServer = CurveKey("--curve-server"); // client
    readonly Option<string[]> curveClients = CurveKeys("--curve-clients"); // server
    // NetMQ has no PLAIN, but the command line is the same in every language.
    readonly Option<string> plainUser = Credential("--plain-user");
    readonly Option<string> plainPassword = Credential("--plain-password");

    public SecurityFlags(Command command, bool server)
    {
        this.server = server;
        mechanism.AcceptOnlyFromAmong("null", "plain", "curve");
        command.Options.Add(mechanism);
        command.Options.Add(curveSecret);
        if (server)
        {
            command.Options.Add(curveClients);
        }
        else
        {
            command.Options.Add(curvePublic);
            command.Options.Add(curveServer);
        }
        command.Options.Add(plainUser);
        command.Options.Add(plainPassword);
    }

    /// <summary>A CURVE key is 40 characters of Z85 that encode 32 bytes: each group of 5 characters
    /// is a number in base 85 that fits in 4 bytes.</summary>
    static bool IsCurveKey(string text) =>
        text.Length == 40 && text.All(Z85.Contains)
        && text.Chunk(5).All(group => group.Aggregate(0UL, (value, c) => value * 85 + (ulong)Z85.IndexOf(c)) <= uint.MaxValue);

    static Option<string> CurveKey(string flag) => new(flag)
    {
        CustomParser = result =>
        {
            string key = result.Tokens.Single().Value;
            if (!IsCurveKey(key)) result.AddError($"{flag} takes a CURVE key: 40 characters of Z85 that encode 32 bytes");
            return key;
        },
    };

    /// <summary>A PLAIN username or password: 1 to 255 bytes of UTF-8 (ZMTP frames each with one
    /// length byte).</summary>
    static Option<string> Credential(string flag) => new(flag)
    {
        CustomParser = result =>
        {
            string text = result.Tokens.Single().Value;
            if (Encoding.UTF8.GetByteCount(text) is < 1 or > 255) result.AddError($"{flag} takes 1 to 255 bytes of UTF-8");
            return text;
        },
    };

    /// <summary>Comma-separated CURVE keys (Z85 never uses ',').</summary>
    static Option<string[]> CurveKeys(string flag) => new(flag)
    {
        CustomParser = result =>
        {
            string[] keys = result.Tokens.Single().Value.Split(',');
            if (!keys.All(IsCurveKey)) result.AddError($"{flag} takes CURVE keys separated by ',': 40 characters of Z85 each");
            return keys;
        },
    };

    /// <summary>The chosen mechanism and its keys. What is missing for it, or what NetMQ cannot do, is a
    /// <see cref="Usage"/> error (exit 2): never a silent downgrade to less security.</summary>
    public Credentials Read(ParseResult parsed)
    {
        string chosen = parsed.GetValue(mechanism)!;
        if (chosen == "plain")
            throw new Usage("--security plain: NetMQ 4.0.4.5 does not implement the PLAIN mechanism");
        if (server && chosen == "curve" && parsed.GetResult(curveClients) is not null)
            throw new Usage("--curve-clients: NetMQ 4.0.4.5 has no ZAP handler, so it cannot restrict client keys");
        string? Required(Option<string> option) => chosen != "curve" ? null
            : parsed.GetValue(option) ?? throw new Usage($"--security curve needs {option.Name}");
        return server
            ? new(chosen, Required(curveSecret), null, null)
            : new(chosen, Required(curveSecret), Required(curvePublic), Required(curveServer));
    }
}
