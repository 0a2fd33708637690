"""Security (examples/README.md, "Security"): keys per cell, what each library lacks, the refusal
checks, every language's command line, the grids under PLAIN and CURVE, and a capture of the TCP
bytes that shows what CURVE hides."""
import itertools
import json
import socket
import subprocess
import threading
import time
from dataclasses import replace

import pytest
import zmq

from conftest import LANGS, REGISTRY, first_language, languages, require
from orchestrator.checks import security as security_checks
from orchestrator.matrix import assign, evaluate, new_run_dir, run_matrix
from orchestrator.runner import LocalLauncher, RoleTranscript
from orchestrator.security import INTRUDER, keypair
from orchestrator.spec import load_spec

from test_chat_roles import start_server, stop
from test_grids import PARALLEL, events_of

# What a cell may need of a language's ZeroMQ library (`lacks:` in the registry).
SECURITY = ("plain", "curve", "zap", "handshake-events")
LIBZMQ = [name for name in LANGS if not any(feature in REGISTRY[name].lacks for feature in SECURITY)]  # lacks none
NETMQ = [name for name in LANGS if name not in LIBZMQ]  # lacks one or more


def able(role, *features):
    """The languages that implement chat `role` and lack none of `features`: the ones a grid cell
    under those features runs and passes with, in registry order."""
    return [name for name in LANGS
            if REGISTRY[name].supports("chat", role) and not any(feature in REGISTRY[name].lacks for feature in features)]


def first(role, *features, lacking=None):
    """The first language with chat `role` and `features` (and lacking `lacking`): conftest's
    first_language, for the chat roles this file is about."""
    return first_language([("chat", role)], having=features, lacking=lacking)


def cell(mechanism, refusal=None, server=None, client=None):
    """A chat cell; by default a server and a client of a library that lacks nothing (libzmq's)."""
    spec = load_spec("chat").with_security(mechanism, refusal)
    return assign(spec, {"server": server or first("server", *SECURITY), "client": client or first("client", *SECURITY)})


def test_keys_are_fresh_z85():
    keys = [key for _ in range(300) for key in keypair()]
    assert len(set(keys)) == len(keys)
    assert all(len(key) == 40 for key in keys)


def test_a_libzmq_server_admits_exactly_the_clients_of_its_cell(registry):
    spec, roles = cell("curve", "unknown-client-key")
    secure = spec.secure.for_cell(roles, registry)
    server = secure.flags("server", 0)
    clients = [secure.flags("client", i)["curve-public"] for i in range(3)]
    intruder = secure.flags(INTRUDER, 0)
    assert server["curve-clients"].split(",") == clients
    assert intruder["curve-public"] not in server["curve-clients"]
    assert {secure.flags("client", i)["curve-server"] for i in range(3)} == {intruder["curve-server"]}
    assert secure.zap and not secure.notes


def test_a_wrong_server_key_is_the_intruders_only_fault(registry):
    spec, roles = cell("curve", "wrong-server-key")
    secure = spec.secure.for_cell(roles, registry)
    intruder = secure.flags(INTRUDER, 0)
    assert intruder["curve-public"] in secure.flags("server", 0)["curve-clients"]
    assert intruder["curve-server"] != secure.flags("client", 0)["curve-server"]


def test_a_wrong_password_keeps_the_username(registry):
    spec, roles = cell("plain", "wrong-password", server=first("server", "plain", "zap"), client=first("client", "plain"))
    secure = spec.secure.for_cell(roles, registry)
    good, bad, server = secure.flags("client", 0), secure.flags(INTRUDER, 0), secure.flags("server", 0)
    assert good["plain-user"] == bad["plain-user"] == server["plain-user"]
    assert good["plain-password"] == server["plain-password"] != bad["plain-password"]


def test_a_netmq_server_gets_no_allow_list_and_the_cell_says_so(registry):
    server = first("server", "curve", lacking="zap")
    spec, roles = cell("curve", server=server)
    secure = spec.secure.for_cell(roles, registry)
    assert "curve-clients" not in secure.flags("server", 0) and not secure.zap
    assert secure.notes == [f"client keys not checked: {registry[server].lacks['zap']}"]


@pytest.mark.parametrize(
    "mechanism, refusal, side, feature",  # the side whose language lacks `feature`; the other side lacks nothing the cell needs
    [
        ("plain", None, "client", "plain"),
        ("plain", None, "server", "plain"),
        ("curve", "unknown-client-key", "server", "zap"),
    ],
)
def test_a_cell_that_needs_what_a_library_lacks_is_unsupported_with_the_reason(registry, tmp_path, mechanism, refusal, side, feature):
    needs = {"server": (mechanism, "zap"), "client": (mechanism,)}  # a PLAIN server and a refusing CURVE one need ZAP, after the mechanism
    other = "client" if side == "server" else "server"
    before = needs[side][:needs[side].index(feature)]  # what it must have for `feature` to be the reason given
    langs = {side: first(side, *before, lacking=feature), other: first(other, *needs[other])}
    spec = load_spec("chat").with_security(mechanism, refusal)
    result = evaluate(spec, langs, registry, tmp_path)
    assert result.status == "unsupported"
    assert result.detail.startswith(f"{langs[side]} {side}: {registry[langs[side]].lacks[feature]}"), result.detail


def test_examples_without_a_security_section_run_under_null_only():
    with pytest.raises(ValueError, match="ticker runs under null, not 'curve'"):
        load_spec("ticker").with_security("curve")
    with pytest.raises(ValueError, match="refusal cases under plain: wrong-password"):
        load_spec("chat").with_security("plain", "wrong-server-key")


# --- the refusal checks on made-up transcripts ---------------------------------------------


def transcript(role, lang, exit_code, events, **flags):
    t = RoleTranscript(role, 0, lang, flags, [])
    t.exit_code, t.events = exit_code, [{"event": name, **fields} for name, fields in events]
    return t


def refusal_problems(registry, intruder_events, server_events, intruder_exit=1, server=None, intruder=None):
    spec, roles = cell("curve", "unknown-client-key", server=server, client=intruder)
    spec = replace(spec, secure=spec.secure.for_cell(roles, registry))
    server, intruder = roles["server"][0], roles[INTRUDER][0]  # as given, or the languages cell() chose
    key = spec.secure.flags(INTRUDER, 0)["curve-public"]
    ts = [
        transcript("server", server, 0, [("ready", {"security": "curve"})] + [(n, {**f, "identity": key} if n == "denied" else f) for n, f in server_events]),
        transcript(INTRUDER, intruder, intruder_exit, intruder_events, name="mallory", **spec.secure.flags(INTRUDER, 0)),
    ]
    return security_checks.check(spec, ts)


REFUSED = [("error", {"code": "refused", "reason": "auth 400"})]
DENIED = [("denied", {"mechanism": "CURVE", "reason": "no"}), ("handshake-failed", {"socket": "requests", "failure": "auth", "value": 400})]


def test_a_clean_refusal_passes_the_checks(registry):
    assert refusal_problems(registry, REFUSED, DENIED) == []


def test_an_intruder_that_got_through_fails_the_cell(registry):
    problems = refusal_problems(registry, [("ready", {"security": "curve"})] + REFUSED, DENIED + [("joined", {"handle": "mallory"})])
    assert any("got through the CURVE handshake: it reported ready" in p for p in problems)
    assert any("a message of the intruder reached it" in p for p in problems)


def test_a_refusal_must_show_where_the_library_can_show_it(registry):
    problems = refusal_problems(registry, [("error", {"code": "timeout", "reason": "silence"})], [])
    assert any("its last error is 'timeout', not 'refused'" in p for p in problems)
    assert any("no handshake-failed event" in p for p in problems)
    assert any("its ZAP handler never denied" in p for p in problems)
    # A NetMQ intruder cannot see the refusal: silence until its timeout is what it can show.
    netmq = first("client", "curve", lacking="handshake-events")
    assert refusal_problems(registry, [("error", {"code": "timeout", "reason": "silence"})], DENIED, intruder=netmq) == []


# --- every language's command line -----------------------------------------------------------

BAD_COMMAND_LINES = {
    "an unknown mechanism": ["server", "--security", "tls"],
    "a short key": ["server", "--security", "curve", "--curve-secret", "abc"],
    "a key outside Z85": ["server", "--security", "curve", "--curve-secret", "~" * 40],
    "a Z85 key beyond 32 bytes": ["server", "--security", "curve", "--curve-secret", "%" * 40],
    "a curve server without its secret": ["server", "--security", "curve"],
    "a curve client without the server key": ["client", "--name", "a", "--security", "curve", "--curve-public", "0" * 40, "--curve-secret", "0" * 40],
    "a plain client without a password": ["client", "--name", "a", "--security", "plain", "--plain-user", "u"],
    "an empty password": ["server", "--security", "plain", "--plain-user", "u", "--plain-password", ""],
}


def run_chat(language, args):
    return subprocess.run(language.command("chat", args[0], {}) + args[1:], env=language.environment(),
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("lang", languages("chat", "server", having="curve"))  # the control runs a CURVE server
def test_every_language_refuses_a_bad_security_command_line(built, lang):
    require(lang, "chat", "client")  # some bad command lines, and the control, are a client's
    language = built[lang]
    for what, args in BAD_COMMAND_LINES.items():
        done = run_chat(language, args)
        assert done.returncode == 2, f"{lang}, {what}: exit {done.returncode}\n{done.stdout}{done.stderr}"
    # The control: with good values the same flags are taken, and the server comes up under CURVE
    # (then its 300 ms --timeout ends it with exit 1). Keys may start with "-", an option to many
    # parsers, or "@", a response file to System.CommandLine unless turned off. (Any 32 bytes make
    # a secret key, and either character keeps the first group of 5 below 2^32.)
    endpoints = ["--requests", "tcp://127.0.0.1:*", "--broadcasts", "tcp://127.0.0.1:*", "--timeout", "300"]
    for first in "-@":
        done = run_chat(language, ["server", "--security", "curve", "--curve-secret", first + keypair()[1][1:]] + endpoints)
        ready = json.loads(done.stdout.splitlines()[0]) if done.stdout else {}
        assert done.returncode == 1 and ready.get("event") == "ready" and ready.get("security") == "curve", done.stdout + done.stderr
        keys = {flag: first + keypair()[0][1:] for flag in ("--curve-server", "--curve-public", "--curve-secret")}
        done = run_chat(language, ["client", "--name", "a", "--security", "curve", "--timeout", "300"]
                        + [part for flag, key in keys.items() for part in (flag, key)])
        assert done.returncode == 1 and '"timeout"' in done.stdout, done.stdout + done.stderr  # no server: no broadcast


@pytest.mark.parametrize("lang", NETMQ)
def test_netmq_says_what_it_cannot_do_rather_than_run_without_it(built, lang):
    key = keypair()[1]
    cases = [  # (what the language lacks, a command line that needs it, the word its refusal names)
        ("plain", ["server", "--security", "plain", "--plain-user", "u", "--plain-password", "p"], "PLAIN"),
        ("plain", ["client", "--name", "a", "--security", "plain", "--plain-user", "u", "--plain-password", "p"], "PLAIN"),
        ("zap", ["server", "--security", "curve", "--curve-secret", key, "--curve-clients", keypair()[0]], "ZAP"),
    ]
    cases = [(args, reason) for feature, args, reason in cases
             if feature in REGISTRY[lang].lacks and REGISTRY[lang].supports("chat", args[0])]
    if not cases:
        pytest.skip(f"{lang} lacks neither PLAIN nor ZAP in a chat role it implements ({', '.join(REGISTRY[lang].lacks)})")
    # A program that runs anyway must not hold the default ports for its whole default timeout: it
    # binds free ports and gives up after 300 ms (exit 1), and the assertion below says so.
    bounded = {"server": ["--requests", "tcp://127.0.0.1:*", "--broadcasts", "tcp://127.0.0.1:*", "--timeout", "300"],
               "client": ["--timeout", "300"]}
    language = built[lang]
    for args, reason in cases:
        done = run_chat(language, args + bounded[args[0]])
        assert done.returncode == 2 and reason in done.stderr, f"{lang} {args}: exit {done.returncode}\n{done.stderr}"


# --- the grids -------------------------------------------------------------------------------


def security_grid(built, mechanism, refusal=None):
    for lang in LANGS:
        built[lang]
    spec = load_spec("chat").with_security(mechanism, refusal)
    results, _, run_dir = run_matrix(spec, {"server": LANGS, "client": LANGS}, built.registry, parallel=PARALLEL)
    assert len(results) == len(LANGS) ** 2
    failures = [f"{r.roles}: {r.status}: {r.detail}" for r in results if r.status not in ("pass", "unsupported")]
    assert not failures, f"{len(failures)} cells failed (logs in {run_dir}):\n" + "\n".join(failures)
    return {(r.roles["server"][0], r.roles["client"][0]): r for r in results}


def assert_supported_exactly(cells, servers, clients):
    for (server, client), result in cells.items():
        expected = "pass" if server in servers and client in clients else "unsupported"
        assert result.status == expected, f"{server} server, {client} client: {result.status} ({result.detail})"


@pytest.mark.grid
def test_every_chat_cell_passes_under_curve(built):
    cells = security_grid(built, "curve")
    assert_supported_exactly(cells, able("server", "curve"), able("client", "curve"))
    for (server, _), result in cells.items():  # libzmq servers admitted each client's key by ZAP
        if result.status != "pass":
            continue  # unsupported, as assert_supported_exactly expected
        [admitted] = events_of(result, "server", "authenticated")
        assert len(admitted) >= (6 if "zap" not in REGISTRY[server].lacks else 0)  # 3 clients, 2 connections each
        assert [len(received) for received in events_of(result, "client", "received")] == [15, 15, 15]


@pytest.mark.grid
def test_under_plain_only_libzmq_pairs_run_and_pass(built):
    assert_supported_exactly(security_grid(built, "plain"), able("server", "plain", "zap"), able("client", "plain"))


@pytest.mark.grid
@pytest.mark.parametrize(
    "mechanism, refusal, servers, clients",
    [
        ("curve", "wrong-server-key", able("server", "curve"), able("client", "curve")),
        ("curve", "unknown-client-key", able("server", "curve", "zap"), able("client", "curve")),
        ("plain", "wrong-password", able("server", "plain", "zap"), able("client", "plain")),
    ],
)
def test_every_server_refuses_the_intruder_and_serves_the_others(built, mechanism, refusal, servers, clients):
    cells = security_grid(built, mechanism, refusal)
    assert_supported_exactly(cells, servers, clients)
    for result in cells.values():
        if result.status == "pass":
            assert [len(received) for received in events_of(result, "client", "received")] == [15, 15, 15]


# --- proof of encryption: the bytes on the wire ----------------------------------------------


class Relay:
    """A TCP relay on loopback that forwards one endpoint and records every byte it forwards."""

    def __init__(self, endpoint):
        host, port = endpoint.removeprefix("tcp://").rsplit(":", 1)
        self.target = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"tcp://127.0.0.1:{self.listener.getsockname()[1]}"
        self.streams = []  # the bytes of each direction of each connection
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                inbound, _ = self.listener.accept()
            except OSError:
                return  # closed
            outbound = socket.create_connection(self.target)
            for source, sink in ((inbound, outbound), (outbound, inbound)):
                self.streams.append(bytearray())
                threading.Thread(target=self.pump, args=(source, sink, self.streams[-1]), daemon=True).start()

    def pump(self, source, sink, stream):
        try:
            while data := source.recv(65536):
                stream += data
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self.listener.close()


class RelayLauncher(LocalLauncher):
    """Local processes, but the clients reach the server's two endpoints through relays."""

    def __init__(self):
        self.relays = []

    def published(self, role, index, event):
        if role != "server":
            return event
        relays = {key: Relay(event[key]) for key in ("requests", "broadcasts")}
        self.relays += relays.values()
        return {**event, **{key: relay.endpoint for key, relay in relays.items()}}

    def streams(self):
        return [bytes(stream) for relay in self.relays for stream in relay.streams]


def capture_clients():
    """Three CURVE clients, of as many different libraries as the registry has (by what each lacks),
    in registry order: clients of libzmq and of NetMQ on the same wire."""
    by_library = {}
    for name in able("client", "curve"):
        by_library.setdefault(tuple(sorted(REGISTRY[name].lacks)), []).append(name)
    picked = [name for round_ in itertools.zip_longest(*by_library.values()) for name in round_ if name]
    if not picked:
        pytest.skip("no language in the registry implements a chat client with curve")
    return (picked * 3)[:3]


def captured_cell(built, server, mechanism):
    clients = capture_clients()
    for lang in [server] + clients:
        built[lang]
    launcher = RelayLauncher()
    spec = load_spec("chat").with_security(mechanism)
    try:
        result = evaluate(spec, {"server": server, "client": clients}, built.registry, new_run_dir("chat"), launcher=lambda roles: launcher)
    finally:
        for relay in launcher.relays:
            relay.close()
    assert result.status == "pass", result.problems
    streams = launcher.streams()
    assert len(streams) >= 2 * 2 * len(clients)  # a REQ and a SUB connection each, both ways
    # Every stream starts with a ZMTP 3 greeting (64 bytes): the signature, major version 3 (any
    # minor: which library greets with which is not this test's business), the mechanism at offset 12.
    assert {(stream[0], stream[9], stream[10]) for stream in streams} == {(0xFF, 0x7F, 3)}, {bytes(stream[:12]) for stream in streams}
    assert {stream[12:32].rstrip(b"\0") for stream in streams} == {mechanism.upper().encode()}
    texts = [e["text"] for t in result.transcripts if t.role == "client" for e in t.events if e["event"] == "sent"]
    assert len(texts) == 15
    return b"".join(streams), texts, [t.flags["name"] for t in result.transcripts if t.role == "client"]


@pytest.mark.parametrize("server", languages("chat", "server", having="curve"))
def test_curve_hides_what_null_shows_on_the_wire(built, server):
    plain_bytes, texts, _ = captured_cell(built, server, "null")
    for text in texts:
        assert text.encode() in plain_bytes, f"{text!r} not in the NULL capture"

    secret_bytes, texts, handles = captured_cell(built, server, "curve")
    assert len(secret_bytes) > len(plain_bytes)  # the same conversation, in boxes, plus the handshake
    for text in texts:
        assert text.encode() not in secret_bytes, f"{text!r} is readable in the CURVE capture"
    for readable in ["héllo wörld".encode(), "🌍".encode()] + [handle.encode() for handle in handles]:
        assert readable not in secret_bytes, f"{readable!r} is readable in the CURVE capture"


# --- peers that break the handshake ----------------------------------------------------------


def greeting(mechanism):
    """A ZMTP 3.0 greeting: signature, version, mechanism (20 bytes, NUL-padded), as-server, filler."""
    return b"\xff" + bytes(8) + b"\x7f" + b"\x03\x00" + mechanism.ljust(20, b"\0") + bytes(32)


ROGUE_BYTES = [
    bytes(range(256)),  # no greeting at all
    greeting(b"NULL") + b"\x04\x07\x05READY",  # another mechanism than the server's
    greeting(b"CURVE") + b"\x04\x05\x05HELLO",  # a HELLO cut short
    greeting(b"CURVE") + b"\x04\xc8\x05HELLO" + bytes(194),  # a HELLO of the right size, a box that does not open
    greeting(b"CURVE") + b"\x06" + b"\x7f" * 8,  # a command that claims to be 9 EB long
]


@pytest.mark.parametrize("lang", languages("chat", "server", having="curve"))
def test_a_curve_server_survives_peers_that_break_the_handshake(built, start_role, lang):
    client_lang = first("client", "curve")  # the good client after the rogues: any language with CURVE
    server_public, server_secret = keypair()
    server, ready = start_server(start_role, lang, security="curve", **{"curve-secret": server_secret})
    host, port = ready["requests"].removeprefix("tcp://").rsplit(":", 1)
    for data in ROGUE_BYTES:
        with socket.create_connection((host, int(port))) as rogue:
            rogue.sendall(data)
    context = zmq.Context()
    try:
        intruder = context.socket(zmq.REQ)  # a NULL client: its request must never be read
        intruder.linger = 0
        intruder.connect(ready["requests"])
        intruder.send(b"nullclient")
        public, secret = keypair()
        client = start_role(client_lang, "chat", "client", requests=ready["requests"], broadcasts=ready["broadcasts"],
                            name="alice", count=2, security="curve",
                            **{"curve-server": server_public, "curve-public": public, "curve-secret": secret})
        assert client.wait_exit(time.monotonic() + 30) and client.t.exit_code == 0, client.t.events[-3:]
    finally:
        context.destroy(linger=0)
    stop(server)
    assert [e["handle"] for e in server.t.events if e["event"] == "joined"] == ["alice"]
