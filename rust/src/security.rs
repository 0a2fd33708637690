//! ZMTP security for any example that has a Security section (examples/README.md, "Security"; chat
//! is the one): the mechanism flags, the socket options of NULL, PLAIN and CURVE, and the ZAP
//! handler. The handshake failures a secure socket reports come from its monitor (monitor.rs).
use clap::Args;
use serde_json::json;

use crate::contract::{emit, recv_if_ready, Failure};
use crate::monitor::Monitor;

/// --security: ZMTP 3's three mechanisms.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mechanism {
    /// no authentication, no encryption
    Null,
    /// a username and password, in the clear
    Plain,
    /// public-key authentication and encryption (CurveZMQ)
    Curve,
}

impl Mechanism {
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Null => "null",
            Mechanism::Plain => "plain",
            Mechanism::Curve => "curve",
        }
    }
}

/// Z85's alphabet (RFC 32): the character of each digit 0 to 84. It has no `,`.
const Z85: &str = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";

/// A clap value parser: a CURVE key, 40 characters of Z85 encoding 32 bytes. It stays text: libzmq
/// takes the 40 characters as they are for CURVE_SECRETKEY, _PUBLICKEY and _SERVERKEY.
pub fn z85_key(value: &str) -> Result<String, String> {
    let bad = || format!("a CURVE key is 40 characters of Z85, got {:?}", value);
    if value.len() != 40 {
        return Err(bad());
    }
    // Each 5 characters are one base-85 number that must fit the 4 bytes it stands for.
    for group in value.as_bytes().chunks(5) {
        let mut number = 0u64;
        for &c in group {
            number = number * 85 + Z85.find(c as char).ok_or_else(bad)? as u64;
        }
        if number > u32::MAX.into() {
            return Err(bad());
        }
    }
    Ok(value.to_string())
}

/// A clap value parser: a PLAIN username or password, 1 to 255 bytes (libzmq's limits).
pub fn plain_credential(value: &str) -> Result<String, String> {
    if (1..=255).contains(&value.len()) {
        Ok(value.to_string())
    } else {
        Err("a PLAIN username or password is 1 to 255 bytes".to_string())
    }
}

/// The security flags of a server (examples/README.md, "Security"): the mechanism, the server's own
/// CURVE secret key or the one PLAIN account it admits, and the CURVE clients it admits. A flag of
/// the mechanism chosen is required; those of another mechanism are not used (but still checked).
#[derive(Args)]
pub struct ServerFlags {
    #[arg(long, value_enum, default_value_t = Mechanism::Null)]
    security: Mechanism,
    #[arg(long, value_parser = z85_key, required_if_eq("security", "curve"))]
    curve_secret: Option<String>,
    /// the client public keys admitted under curve; absent: any client that knows our public key
    #[arg(long, value_parser = z85_key, value_delimiter = ',')]
    curve_clients: Vec<String>,
    #[arg(long, value_parser = plain_credential, required_if_eq("security", "plain"))]
    plain_user: Option<String>,
    #[arg(long, value_parser = plain_credential, required_if_eq("security", "plain"))]
    plain_password: Option<String>,
}

impl ServerFlags {
    pub fn mechanism(&self) -> Mechanism {
        self.security
    }
}

/// The security flags of a client: the mechanism, the client's own CURVE key pair and its copy of
/// the server's public key, or its PLAIN username and password.
#[derive(Args)]
pub struct ClientFlags {
    #[arg(long, value_enum, default_value_t = Mechanism::Null)]
    security: Mechanism,
    #[arg(long, value_parser = z85_key, required_if_eq("security", "curve"))]
    curve_secret: Option<String>,
    #[arg(long, value_parser = z85_key, required_if_eq("security", "curve"))]
    curve_public: Option<String>,
    /// the server's public key, learnt out of band
    #[arg(long, value_parser = z85_key, required_if_eq("security", "curve"))]
    curve_server: Option<String>,
    #[arg(long, value_parser = plain_credential, required_if_eq("security", "plain"))]
    plain_user: Option<String>,
    #[arg(long, value_parser = plain_credential, required_if_eq("security", "plain"))]
    plain_password: Option<String>,
}

impl ClientFlags {
    pub fn mechanism(&self) -> Mechanism {
        self.security
    }
}

/// A CURVE key flag as a socket option value: its 40 characters of Z85, which libzmq decodes.
/// (clap made the flag required under curve, where this is called.)
fn key(flag: &Option<String>) -> &[u8] {
    flag.as_deref().unwrap_or_default().as_bytes()
}

/// Make every socket of `sockets` (its flag name, and the socket, not bound yet) a security server
/// of the chosen mechanism. The options are read as each connection starts: set before `bind`.
/// Returns what the role's loop polls besides its own sockets: the ZAP handler, bound here first
/// (under plain, and under curve with --curve-clients), and under plain or curve one handshake
/// watcher per socket (monitor.rs). Under null: neither, and the sockets are free for --monitor.
pub fn secure_server(
    context: &zmq::Context,
    flags: &ServerFlags,
    sockets: &[(&'static str, &zmq::Socket)],
) -> Result<(Option<Zap>, Vec<Monitor>), Failure> {
    let zap = match flags.security {
        // Without a handler, libzmq's PLAIN server would admit any password: plain always runs it.
        Mechanism::Plain => {
            let user = flags.plain_user.clone().unwrap_or_default();
            let password = flags.plain_password.clone().unwrap_or_default();
            Some(Zap::bind(context, Admit::Plain { user, password })?)
        }
        Mechanism::Curve if !flags.curve_clients.is_empty() => {
            Some(Zap::bind(context, Admit::CurveKeys(flags.curve_clients.clone()))?)
        }
        _ => None,
    };
    for (_, socket) in sockets {
        match flags.security {
            Mechanism::Null => {}
            // [PLAIN] The client sends a username and password in clear; libzmq's PLAIN server
            // checks nothing by itself: only our ZAP handler, which compares them, gives it meaning.
            Mechanism::Plain => socket.set_plain_server(true)?,
            // [CURVE] The server's secret key, set before bind: a client must hold the matching
            // public key (--curve-server) to finish the handshake, and every frame is then encrypted.
            Mechanism::Curve => {
                socket.set_curve_server(true)?;
                socket.set_curve_secretkey(key(&flags.curve_secret))?;
            }
        }
    }
    let monitors = match flags.security {
        Mechanism::Null => Vec::new(),
        // libzmq allows one monitor per socket: these sockets have the handshake watcher, no --monitor.
        _ => sockets.iter().map(|&(name, socket)| Monitor::new(context, socket, name)).collect::<Result<_, _>>()?,
    };
    Ok((zap, monitors))
}

/// Give `socket` (not connected yet) the client's credentials for the chosen mechanism. The
/// options are read as each connection starts: set before `connect`.
pub fn secure_client(socket: &zmq::Socket, flags: &ClientFlags) -> Result<(), Failure> {
    match flags.security {
        Mechanism::Null => {}
        Mechanism::Plain => {
            socket.set_plain_username(flags.plain_user.as_deref())?;
            socket.set_plain_password(flags.plain_password.as_deref())?;
        }
        // [CURVE] The client's copy of the server's public key, learnt out of band, and its own
        // key pair, set before connect: with a wrong server key the handshake fails (no-detail).
        Mechanism::Curve => {
            socket.set_curve_serverkey(key(&flags.curve_server))?;
            socket.set_curve_publickey(key(&flags.curve_public))?;
            socket.set_curve_secretkey(key(&flags.curve_secret))?;
        }
    }
    Ok(())
}

/// Who a ZAP handler admits.
pub enum Admit {
    /// CURVE clients whose public key (Z85) is one of these
    CurveKeys(Vec<String>),
    /// PLAIN peers with exactly this username and password
    Plain { user: String, password: String },
}

/// A ZAP handler (RFC 27): libzmq asks whatever is bound at `inproc://zeromq.zap.01` in the
/// context of a PLAIN or CURVE server socket to judge each handshake, and waits for the answer.
/// Its socket is polled in the role's own loop together with the others: no thread.
pub struct Zap {
    pub socket: zmq::Socket,
    admit: Admit,
}

impl Zap {
    /// Bind the handler (secure_server calls it before the secure sockets even get their options).
    pub fn bind(context: &zmq::Context, admit: Admit) -> Result<Self, Failure> {
        let socket = context.socket(zmq::REP)?; // REP: libzmq's side is a REQ, one request at a time
        socket.set_linger(0)?;
        // [ZAP] libzmq asks whatever is bound at this inproc endpoint of the server's context to
        // judge every PLAIN or CURVE handshake, and waits for the answer. Bound before the sockets
        // it guards, so that no handshake starts without it (none: any password, any client key).
        socket.bind("inproc://zeromq.zap.01")?;
        Ok(Zap { socket, admit })
    }

    /// Answer the waiting request `200` or `400`, and report it as `authenticated` or `denied`.
    pub fn answer(&self) -> Result<(), Failure> {
        let Some(request) = recv_if_ready(&self.socket)? else { return Ok(()) };
        let frame = |i: usize| request.get(i).map_or(&[][..], Vec::as_slice);
        let (identity, verdict) = self.judge(&request);
        let (status, text, user_id) = match &verdict {
            Ok(()) => ("200", "OK", identity.as_str()),
            Err(reason) => ("400", reason.as_str(), ""),
        };
        // [version, request id (copied), status code, status text, user id, metadata]
        let reply = [&b"1.0"[..], frame(1), status.as_bytes(), text.as_bytes(), user_id.as_bytes(), b""];
        self.socket.send_multipart(reply, 0)?;
        let mechanism = String::from_utf8_lossy(frame(5)); // "CURVE" or "PLAIN", as libzmq wrote it
        match verdict {
            Ok(()) => emit("authenticated", json!({ "mechanism": mechanism, "identity": identity })),
            Err(reason) => {
                emit("denied", json!({ "mechanism": mechanism, "identity": identity, "reason": reason }))
            }
        }
        Ok(())
    }

    /// The peer's identity (the Z85 key or the username; "" if the request cannot be read) and
    /// whether it is admitted.
    fn judge(&self, request: &[Vec<u8>]) -> (String, Result<(), String>) {
        // [version, request id, domain, address, routing id, mechanism, credentials...]
        if request.len() < 6 || request[0] != b"1.0" {
            return (String::new(), Err("not a ZAP 1.0 request".to_string()));
        }
        match (request[5].as_slice(), &request[6..]) {
            // CURVE: the client's public key, 32 raw bytes; we report and compare it in Z85.
            (b"CURVE", [key]) if key.len() == 32 => {
                let key = zmq::z85_encode(key).expect("32 bytes are whole 4-byte groups");
                let admitted = matches!(&self.admit, Admit::CurveKeys(keys) if keys.contains(&key));
                let verdict = if admitted { Ok(()) } else { Err("the key is not one of --curve-clients".into()) };
                (key, verdict)
            }
            // PLAIN: username and password, as the client sent them.
            (b"PLAIN", [user, password]) => {
                let admitted = matches!(&self.admit, Admit::Plain { user: u, password: p }
                    if u.as_bytes() == user.as_slice() && p.as_bytes() == password.as_slice());
                let verdict = if admitted { Ok(()) } else { Err("wrong username or password".into()) };
                (String::from_utf8_lossy(user).into_owned(), verdict)
            }
            _ => (String::new(), Err("unknown mechanism or malformed credentials".to_string())),
        }
    }
}
