/// Security (examples/README.md, "Security: mechanisms, keys and passwords"): the security flags and
/// their checks, the CURVE keys in Z85, and the mechanism's options on a role's sockets. Chat is the
/// example with a Security section; any other would use the same.
module Btb.Security

open Argu
open NetMQ
open Btb.Contract

/// The mechanism a role runs under, and its CURVE keys in Z85 (each checked) when it is `curve`.
type Settings =
    { Mechanism: string; CurveSecret: string option; CurvePublic: string option; CurveServer: string option }

// --- the flags: Argu runs these checks on a flag's value (PostProcessResult) ------------------------

/// `--security`: one of ZMTP 3's three mechanisms.
let mechanism (value: string) =
    match value with
    | "null" | "plain" | "curve" -> value
    | _ -> failwith "expected null, plain or curve"

// The Z85 alphabet (RFC 32): 85 printable characters, never ',' nor a space or a quote.
let private z85 = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"

/// Each group of 5 characters of Z85 is a number in base 85 that must fit in 4 bytes.
let private fitsFourBytes (group: char[]) =
    group |> Array.fold (fun value c -> value * 85UL + uint64 (z85.IndexOf c)) 0UL <= 0xFFFFFFFFUL

/// A CURVE key is 40 characters of Z85 that encode 32 bytes.
let curveKey (value: string) =
    if value.Length <> 40 || not (value |> Seq.forall z85.Contains)
       || not (value |> Seq.chunkBySize 5 |> Seq.forall fitsFourBytes) then
        failwith "a CURVE key is 40 characters of Z85 that encode 32 bytes"
    value

/// Comma-separated CURVE keys (Z85 never uses ',').
let curveKeys (value: string) = value.Split ',' |> Seq.map curveKey |> List.ofSeq

/// A PLAIN username or password: 1 to 255 bytes of UTF-8 (ZMTP frames each with one length byte).
let credential (value: string) =
    if not (1 <= utf8.GetByteCount value && utf8.GetByteCount value <= 255) then
        failwith "a PLAIN username or password is 1 to 255 bytes of UTF-8"
    value

// PLAIN and ZAP: NetMQ 4.0.4.5 has neither. A PLAIN server only means something with a ZAP handler
// to check the password, and NetMQ cannot bind one to inproc://zeromq.zap.01 (the registry's
// `lacks: plain, zap`): both are refused on the command line, below.

/// What NetMQ cannot do is a bad command line (exit 2), never a silent downgrade to less security.
let netmqCan (args: ParseResults<'T>) (mechanism: string) (curveClients: bool) =
    if mechanism = "plain" then
        args.Raise("--security plain: NetMQ 4.0.4.5 does not implement the PLAIN mechanism")
    if mechanism = "curve" && curveClients then
        args.Raise("--curve-clients: NetMQ 4.0.4.5 has no ZAP handler, so it cannot restrict client keys")

/// Under `curve`, a key the role needs: missing, it is a bad command line (exit 2). Other
/// mechanisms ignore it.
let curveNeeds (args: ParseResults<'T>) (mechanism: string) (flag: string) (key: string option) =
    match mechanism, key with
    | "curve", None -> args.Raise($"--security curve needs {flag}")
    | "curve", key -> key
    | _ -> None

// --- the mechanism on a socket -------------------------------------------------------------------
// Every socket of a role uses the same mechanism. Under null there is nothing to set.

// [CURVE] The server holds its secret key (NetMQ derives the public half from it); a client holds its
// own keypair and a copy of the server's public key, learnt out of band. The options are read when a
// connection's handshake starts, so they are set before bind or connect.

/// A CURVE server: any client that knows the server's public key gets in (NetMQ has no ZAP to
/// narrow that down).
let secureServer (socket: NetMQSocket) (security: Settings) =
    if security.Mechanism = "curve" then
        socket.Options.CurveServer <- true
        socket.Options.CurveCertificate <- NetMQCertificate.CreateFromSecretKey(security.CurveSecret.Value)

/// A CURVE client proves itself with its own keypair and trusts only the server whose public key
/// it was given: a server without the matching secret key fails the handshake.
let secureClient (socket: NetMQSocket) (security: Settings) =
    if security.Mechanism = "curve" then
        socket.Options.CurveCertificate <-
            NetMQCertificate(security.CurveSecret.Value, security.CurvePublic.Value)
        socket.Options.CurveServerCertificate <- NetMQCertificate.FromPublicKey(security.CurveServer.Value)
