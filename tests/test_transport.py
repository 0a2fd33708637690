"""Transports and socket monitors (examples/README.md, "Transports: tcp and ipc" and "Socket
monitors"): the endpoints a cell hands out over ipc, which cells can run there, every language's
socket-events, and the connection timeline of a cell that fails."""
import re
import socket
from dataclasses import replace

import pytest

from conftest import LANGS, REGISTRY, languages
from orchestrator import transport
from orchestrator.checks import SOCKET_EVENTS, monitor_problems
from orchestrator.matrix import evaluate, new_run_dir, replay_command
from orchestrator.report import timelines
from orchestrator.runner import RoleTranscript
from orchestrator.spec import load_spec

NETMQ = [lang for lang in LANGS if transport.UNIX_IPC in REGISTRY[lang].lacks]
LIBZMQ = [lang for lang in LANGS if lang not in NETMQ]


def test_an_ipc_path_is_short_and_its_socket_lives_in_the_cell_folder(tmp_path):
    cell = tmp_path / ("a-very-long-cell-folder-name-" * 6)  # a desk cell's folder is about this long
    ipc = transport.IpcFolder(cell)
    try:
        endpoint = ipc.endpoint("desk", 0, "chat-broadcasts")
        path = endpoint.removeprefix("ipc://")
        assert len(path.encode()) < 107 < len(str(cell / "ipc" / "desk0-chat-broadcasts").encode())
        with socket.socket(socket.AF_UNIX) as unix:  # what libzmq does with it
            unix.bind(path)
        assert (cell / "ipc" / "desk0-chat-broadcasts").is_socket()
    finally:
        ipc.close()
    assert not ipc.link.exists() and (cell / "ipc").is_dir()


def test_netmq_ports_are_drawn_outside_the_ephemeral_range_and_apart_from_other_cells(tmp_path):
    """A connecting socket or a `:*` bind takes its port from the kernel's ephemeral range: a NetMQ
    cell's derived ports stay out of it, and two cells of one run never hold the same port."""
    names = [("engine", 0, flag) for flag in ("snapshot", "updates", "collector")] + [("publisher", 0, "ticks")]
    cells = [transport.IpcFolder(tmp_path / f"cell{n}", names) for n in range(20)]
    try:
        ephemeral = transport.ephemeral_ports()
        held = [port for cell in cells for port in cell.ports]
        assert len(held) == len(set(held)) == 20 * len(names)
        assert not [port for port in held if port in ephemeral]
        assert set(held) == {transport.netmq_port(cell.endpoint(*name).removeprefix("ipc://")) for cell in cells for name in names}
    finally:
        for cell in cells:
            cell.close()
    assert not transport._reserved  # released with their cells


def test_over_ipc_only_the_wildcard_tcp_endpoints_change_and_a_browser_s_page_stays_tcp(tmp_path):
    page = load_spec("desk").with_transport("ipc")
    page = replace(page, tcp_only=("http",))
    ipc = transport.IpcFolder(tmp_path)
    try:
        flags = {"requests": "tcp://127.0.0.1:*", "http": "tcp://127.0.0.1:*", "ticks": "tcp://10.0.0.1:5",
                 "name": "desk", "count": 5}
        out = transport.endpoints(page, "desk", 1, flags, ipc)
        assert out == {**flags, "requests": f"ipc://{ipc.link}/desk1-requests"}
        assert transport.endpoints(page, "desk", 1, flags, None) == flags
    finally:
        ipc.close()


@pytest.mark.skipif(not NETMQ or not LIBZMQ, reason="needs a NetMQ language and a libzmq one in the registry")
def test_ipc_cells_say_what_each_library_can_do():
    netmq, libzmq = NETMQ[0], LIBZMQ[0]
    reason = transport.unsupported("ipc", {netmq, libzmq}, REGISTRY, "process")
    assert f"a Unix domain socket ({', '.join(LIBZMQ)}) never meets NetMQ's loopback TCP ({', '.join(NETMQ)})" in reason
    assert "TCP on 127.0.0.1" in reason
    assert transport.unsupported("ipc", set(NETMQ), REGISTRY, "process") is None  # it runs...
    assert "TCP on 127.0.0.1" in transport.note("ipc", set(NETMQ), REGISTRY)  # ...and says what its ipc was
    assert "loopback of its own" in transport.unsupported("ipc", {netmq}, REGISTRY, "docker")
    assert transport.unsupported("ipc", set(LIBZMQ), REGISTRY, "docker") is None
    assert transport.note("ipc", set(LIBZMQ), REGISTRY) is None
    assert transport.unsupported("tcp", {netmq, libzmq}, REGISTRY, "docker") is None


def test_a_mixed_ipc_cell_is_unsupported_before_anything_starts():
    if not NETMQ or not LIBZMQ:
        pytest.skip("needs a NetMQ language and a libzmq one in the registry")
    spec = load_spec("chat").with_transport("ipc")
    result = evaluate(spec, {"server": LIBZMQ[0], "client": NETMQ[0]}, REGISTRY, new_run_dir("chat"))
    assert result.status == "unsupported" and not result.transcripts
    assert replay_command(spec, result.roles).endswith("--transport ipc")


def test_an_unknown_transport_is_refused():
    with pytest.raises(ValueError, match="tcp, ipc"):
        load_spec("chat").with_transport("pgm")


def transcript(events, flags=("requests",)):
    t = RoleTranscript("client", 0, "python", {flag: "x" for flag in flags}, [])
    t.events = events
    return t


def test_the_checker_reads_socket_events_by_the_contract():
    monitored = load_spec("chat").with_transport("tcp", monitor=True)
    good = {"event": "socket-event", "socket": "requests", "kind": "connected", "endpoint": "tcp://127.0.0.1:5", "value": 9}
    assert monitor_problems(monitored, transcript([good, {**good, "value": None}])) == []
    assert "without --monitor on" in monitor_problems(load_spec("chat"), transcript([good]))[0]
    assert "unknown kind" in monitor_problems(monitored, transcript([{**good, "kind": "monitor-stopped"}]))[0]
    assert "none of its endpoint flags" in monitor_problems(monitored, transcript([{**good, "socket": "zap"}]))[0]
    assert "neither a number nor null" in monitor_problems(monitored, transcript([{**good, "value": "9"}]))[0]


@pytest.mark.parametrize("lang", languages("chat", "server"))
def test_every_language_narrates_a_chat_cell_s_connections(built, lang):
    """A monitored chat cell in one language, over tcp: the server's sockets report listening and
    then a connection accepted per client, each client's are connected; nothing after done."""
    built[lang]
    spec = load_spec("chat").with_transport("tcp", monitor=True)
    result = evaluate(spec, {"server": lang, "client": lang}, built.registry, new_run_dir("chat"))
    assert result.status == "pass", result.problems
    for t in result.transcripts:
        seen = {}
        for event in t.events:
            if event["event"] == "socket-event":
                assert event["kind"] in SOCKET_EVENTS
                seen.setdefault(event["socket"], []).append(event["kind"])
        if t.role == "server":
            for name in ("requests", "broadcasts"):
                assert seen[name][0] == "listening", (t.label, seen)
                assert seen[name].count("accepted") >= 3, (t.label, seen)
        else:
            for name in ("requests", "broadcasts"):
                assert "connected" in seen[name], (t.label, seen)
        assert t.events[-1]["event"] == "done"


def test_a_cell_that_fails_shows_its_roles_connection_timelines():
    """Forced: a client sent to a port nobody listens on never connects; the cell's details say so
    from the client's own socket monitor."""
    with socket.socket() as probe:  # a port that was free a moment ago, and is closed now
        probe.bind(("127.0.0.1", 0))
        dead = f"tcp://127.0.0.1:{probe.getsockname()[1]}"
    spec = load_spec("chat").with_transport("tcp", monitor=True)
    client = spec.role("client")
    client = replace(client, flags={**client.flags, "requests": dead, "timeout": 2000})
    spec = replace(spec, roles=[client if role.name == "client" else role for role in spec.roles])
    lang = LIBZMQ[0] if LIBZMQ else LANGS[0]
    result = evaluate(spec, {"server": lang, "client": lang}, REGISTRY, new_run_dir("chat"))
    assert result.status == "fail"
    lines = timelines(spec, result)
    [requests] = [line for line in lines if line.startswith(f"client 0 ({lang}) requests:")]
    kinds = re.findall(r"[a-z][a-z-]*", requests.split(": ", 1)[1])
    assert "connect-retried" in kinds and "connected" not in kinds, lines
    [server] = [line for line in lines if line.startswith(f"server 0 ({lang}) requests:")]
    assert server.split(": ")[1].startswith("listening"), lines


@pytest.mark.parametrize("lang", languages("chat", "server", lacking=transport.UNIX_IPC))
def test_netmq_s_ipc_is_tcp_at_the_port_the_orchestrator_derives_and_checks_is_free(built, lang):
    """NetMQ binds `ipc://NAME` as TCP on 127.0.0.1 at a port derived from NAME; the orchestrator
    derives the same port (transport.netmq_port) to draw names whose ports are free."""
    built[lang]
    spec = load_spec("chat").with_transport("ipc", monitor=True)
    result = evaluate(spec, {"server": lang, "client": lang}, REGISTRY, new_run_dir("chat"))
    assert result.status == "pass", result.problems
    assert "not a Unix socket" in result.detail  # the note: what "ipc" was here
    [server] = [t for t in result.transcripts if t.role == "server"]
    listening = {e["socket"]: e["endpoint"] for e in server.events if e["event"] == "socket-event" and e["kind"] == "listening"}
    for flag in ("requests", "broadcasts"):
        path = server.flags[flag].removeprefix("ipc://")
        assert listening[flag] == f"tcp://127.0.0.1:{transport.netmq_port(path)}"
