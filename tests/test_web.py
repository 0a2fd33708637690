"""The desk's web page over ZMQ_STREAM in every language (examples/desk/PROTOCOL.md, "The web page"),
spoken to with a raw TCP client: the answers of the HTTP subset, the commands a page sends, the
event stream and its replay, deadlines, idle and vanishing clients, and a reader too slow for its
stream. The browser tests are in test_page.py."""
import json
import os
import socket
import subprocess
import time

import pytest

from conftest import first_language, languages
from orchestrator import ROOT
from orchestrator.spec import load_spec
from test_desk import WAIT, desk_flags, services_language

PAGE = (ROOT / "examples" / "desk" / "page.html").read_bytes()
HEAD_LIMIT, BODY_LIMIT = 8192, 4096


def closes_gracefully(registry, lang):
    """Whether the language's STREAM socket closes with a FIN; the NetMQ languages' reset is
    recorded in the registry (`lacks: stream-close`)."""
    return "stream-close" not in registry[lang].lacks


def assert_closed_by_desk(sock, graceful):
    """The desk closed the connection: a FIN (recv returns nothing) or, where the registry says
    the library resets instead, an RST; each language must do what the registry says of it."""
    try:
        end = sock.recv(1)
    except ConnectionResetError:
        assert not graceful, "a reset, where the registry says the library closes gracefully"
        return
    assert end == b"", f"more bytes where the desk should have closed: {end!r}"
    assert graceful, "a graceful close, where the registry says the library resets: remove `lacks: stream-close`"


def start_desk(start_role, lang, **changes):
    desk = start_role(lang, "desk", "trader", **desk_flags(http="tcp://127.0.0.1:*", trade=0, **changes))
    ready = desk.wait_for(lambda e: e["event"] == "ready" and "agent" not in e, time.monotonic() + WAIT)
    assert ready and ready["http"].startswith("tcp://127.0.0.1:"), desk.t.events[-3:]
    return desk, int(ready["http"].rsplit(":", 1)[1])


def connect(port, timeout=WAIT):
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def read_response(sock):
    """(status, headers with lower-case names, body) of one response; the body as long as
    Content-Length says (none for a 204)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed before a whole response head: {data[:200]!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("ascii").split("\r\n")
    version, status, _ = status_line.split(" ", 2)
    assert version == "HTTP/1.1", status_line
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "the connection closed inside the body"
        body += chunk
    return int(status), headers, body


def exchange(port, request):
    with connect(port) as sock:
        sock.sendall(request)
        return read_response(sock)


def post(target, body, **headers):
    lines = [f"POST {target} HTTP/1.1", "Host: desk", f"Content-Length: {len(body)}"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def get(target):
    return f"GET {target} HTTP/1.1\r\nHost: desk\r\n\r\n".encode()


def commands(desk):
    return [{k: v for k, v in e.items() if k != "event"} for e in desk.t.events if e["event"] == "command"]


# (request, expected status, for the table in the closing note)
CASES = [
    ("GET /", get("/"), 200),
    ("GET /nope", get("/nope"), 404),
    ("GET /favicon.ico", get("/favicon.ico"), 404),
    ("GET /?x=1", get("/?x=1"), 404),
    ("POST / (a page is GET only)", post("/", b""), 405),
    ("GET /follow (POST only)", get("/follow"), 405),
    ("DELETE /events", b"DELETE /events HTTP/1.1\r\n\r\n", 405),
    ("request line of one word", b"GARBAGE\r\n\r\n", 400),
    ("request line without version", b"GET /\r\n\r\n", 400),
    ("two spaces in the request line", b"GET  / HTTP/1.1\r\n\r\n", 400),
    ("binary junk", b"\x00\xff\xfe\x01 \x02 \x03\r\n\r\n", 400),
    ("version HTTP/1.x garbage", b"GET / HTTP/1.x\r\n\r\n", 400),
    ("HTTP/2.0", b"GET / HTTP/2.0\r\n\r\n", 505),
    ("HTTP/1.0", b"GET /nope HTTP/1.0\r\n\r\n", 404),
    ("a header line without a colon", b"GET / HTTP/1.1\r\nHost desk\r\n\r\n", 400),
    ("a head over 8192 bytes", b"GET / HTTP/1.1\r\nX-Pad: " + b"a" * HEAD_LIMIT + b"\r\n\r\n", 431),
    ("POST without Content-Length", b"POST /chat HTTP/1.1\r\nHost: desk\r\n\r\nhello", 411),
    ("POST /nope without Content-Length (404 first)", b"POST /nope HTTP/1.1\r\n\r\n", 404),
    ("GET /nope, Content-Length 5000 (413 first)", b"GET /nope HTTP/1.1\r\nContent-Length: 5000\r\n\r\n", 413),
    ("chunked, then a line without a colon (400 first)", b"POST /chat HTTP/1.1\r\nTransfer-Encoding: chunked\r\nBad\r\n\r\n", 400),
    ("Content-Length 4097", b"POST /chat HTTP/1.1\r\nContent-Length: 4097\r\n\r\n", 413),
    ("Transfer-Encoding: chunked", b"POST /chat HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 501),
    ("Content-Length: abc", b"POST /chat HTTP/1.1\r\nContent-Length: abc\r\n\r\nabc", 400),
    ("Content-Length: -1", b"POST /chat HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
    ("two different Content-Lengths", b"POST /chat HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc", 400),
    ("follow 'aapl'", post("/follow", b"aapl"), 400),
    ("follow 'TOOLONGSYM'", post("/follow", b"TOOLONGSYM"), 400),
    ("follow ''", post("/follow", b""), 400),
    ("follow IBM", post("/follow", b"IBM"), 204),
    ("forget IBM", post("/forget", b"IBM"), 204),
    ("follow GOOGL, body longer than Content-Length", post("/follow", b"GOOGL")[:-5] + b"GOOGLEXTRA BYTES", 204),
    ("chat ''", post("/chat", b""), 400),
    ("chat, not UTF-8", post("/chat", b"caf\xe9"), 400),
    ("chat 4096 bytes", post("/chat", "é".encode() * 2048), 204),
    ("chat 'héllo 🌍'", post("/chat", "héllo 🌍".encode()), 204),
    ("value 0", post("/value", b"0"), 400),
    ("value 'abc'", post("/value", b"abc"), 400),
    ("value '+5'", post("/value", b"+5"), 400),
    ("value 1000001", post("/value", b"1000001"), 400),
    ("value 5", post("/value", b"5"), 204),
    ("value 5 while it runs", post("/value", b"5"), 409),
]


@pytest.mark.parametrize("lang", languages("desk", "trader"))
def test_every_answer_of_the_http_subset(start_role, lang):
    """One desk, every case in turn on its own connection; then the commands it reported are
    exactly the accepted ones, each agent saw its command, and the desk still stops cleanly."""
    desk, port = start_desk(start_role, lang)
    answers = {}
    for name, request, _ in CASES:
        status, headers, body = exchange(port, request)
        answers[name] = status
        assert headers.get("connection") == "close", (name, headers)
        if status == 200:
            assert headers["content-type"] == "text/html; charset=utf-8" and body == PAGE, name
        elif status == 204:
            assert body == b"" and "content-length" not in headers, (name, headers)
        else:
            assert headers["content-type"] == "text/plain; charset=utf-8" and body.strip(), (name, headers, body)
        if status == 405:
            assert headers["allow"] == ("POST" if "follow" in name else "GET"), (name, headers)
    assert answers == {name: status for name, _, status in CASES}
    assert commands(desk) == [
        {"command": "FOLLOW", "symbol": "IBM"},
        {"command": "FORGET", "symbol": "IBM"},
        {"command": "FOLLOW", "symbol": "GOOGL"},
        {"command": "POST", "text": "é" * 2048},
        {"command": "POST", "text": "héllo 🌍"},
        {"command": "VALUE", "orders": 5},
    ]
    later = time.monotonic() + WAIT
    for event, symbol in (("subscribed", "IBM"), ("unsubscribed", "IBM"), ("subscribed", "GOOGL")):
        assert desk.wait_for(lambda e: e["event"] == event and e.get("agent") == "ticker" and e.get("symbol") == symbol, later)
    desk.terminate()
    assert desk.wait_exit(time.monotonic() + WAIT) and desk.t.exit_code == 0, desk.t.events[-3:]
    assert not [e for e in desk.t.events if e["event"] == "error"], [e for e in desk.t.events if e["event"] == "error"]
    record_answers(lang, answers)


def record_answers(lang, answers):
    """Keep each language's answers for the table in README.md and the closing note."""
    path = ROOT / "runs" / "web-answers.json"
    path.parent.mkdir(exist_ok=True)
    table = json.loads(path.read_text()) if path.exists() else {}
    table[lang] = answers
    path.write_text(json.dumps(table, indent=1, ensure_ascii=False))


@pytest.mark.parametrize("lang", languages("desk", "trader"))
def test_a_request_in_pieces_and_a_request_too_slow(start_role, registry, lang):
    desk, port = start_desk(start_role, lang)
    graceful = closes_gracefully(registry, lang)
    with connect(port) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        request = post("/follow", b"IBM")
        for piece in (request[:5], request[5:20], request[20:-2], request[-2:]):
            sock.sendall(piece)
            time.sleep(0.05)  # not synchronization: it puts the pieces in separate TCP segments
        assert read_response(sock)[0] == 204
    started = time.monotonic()
    with connect(port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: de")  # and then nothing: the 5000 ms deadline
        status, _, _ = read_response(sock)
        assert status == 408
        assert_closed_by_desk(sock, graceful)
    assert 4 < time.monotonic() - started < WAIT
    with connect(port) as sock:  # a client that never closes after its answer is closed by the desk
        sock.sendall(get("/nope"))
        assert read_response(sock)[0] == 404
        assert_closed_by_desk(sock, graceful)
    desk.terminate()
    assert desk.wait_exit(time.monotonic() + WAIT) and desk.t.exit_code == 0


def events_of(stream_bytes):
    """The JSON objects of an event stream's `data:` lines."""
    return [json.loads(line[6:]) for line in stream_bytes.decode().split("\n") if line.startswith("data: ")]


def open_stream(port):
    sock = connect(port)
    sock.sendall(get("/events"))
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"content-type: text/event-stream" in head.lower(), head
    return sock, rest


def read_until(sock, data, wanted, count=1):
    """Read the stream until `count` events for which `wanted` holds; all the data so far."""
    while sum(1 for e in events_of(data[: data.rfind(b"\n\n") + 2]) if wanted(e)) < count:
        chunk = sock.recv(65536)
        assert chunk, "the stream ended"
        data += chunk
    return data


@pytest.mark.parametrize("lang", languages("desk", "trader"))
def test_the_event_stream_replays_the_start_then_goes_live(start_role, lang):
    desk, port = start_desk(start_role, lang)
    sock, data = open_stream(port)
    with sock:
        data = read_until(sock, data, lambda e: e["event"] == "ready" and "agent" not in e)
        first = events_of(data)
        assert [(e.get("agent"), e["event"]) for e in first[:5]] == [(a, "ready") for a in ("chat", "ticker", "valuation", "query")] + [(None, "ready")]
        assert exchange(port, post("/follow", b"IBM"))[0] == 204
        data = read_until(sock, data, lambda e: e["event"] == "subscribed" and e.get("symbol") == "IBM")
        live = events_of(data)[len(first):]
        assert {"event": "command", "command": "FOLLOW", "symbol": "IBM"} in live
    # A second stream gets the same start-up and the lines since, then goes live too.
    sock, data = open_stream(port)
    with sock:
        data = read_until(sock, data, lambda e: e["event"] == "subscribed" and e.get("symbol") == "IBM")
    lines = [e for e in desk.t.events if e["event"] != "result"]
    assert events_of(data) == lines[: len(events_of(data))]
    desk.terminate()
    assert desk.wait_exit(time.monotonic() + WAIT) and desk.t.exit_code == 0


@pytest.mark.parametrize("lang", languages("desk", "trader"))
def test_idle_and_vanishing_clients_do_not_stop_the_desk(start_role, lang):
    """200 idle connections, 20 that leave in the middle of a request, 5 streams cut off: the desk
    still answers and streams."""
    desk, port = start_desk(start_role, lang)
    idle = [connect(port) for _ in range(200)]
    try:
        for _ in range(20):
            with connect(port) as sock:
                sock.sendall(b"POST /chat HTTP/1.1\r\nContent-Length: 100\r\n\r\nhalf a bo")
        for _ in range(5):
            sock, _ = open_stream(port)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST
            sock.close()
        status, _, body = exchange(port, get("/"))
        assert status == 200 and body == PAGE
        assert exchange(port, post("/follow", b"IBM"))[0] == 204
        sock, data = open_stream(port)
        with sock:
            read_until(sock, data, lambda e: e["event"] == "subscribed" and e.get("symbol") == "IBM")
    finally:
        for sock in idle:
            sock.close()
    desk.terminate()
    assert desk.wait_exit(time.monotonic() + WAIT) and desk.t.exit_code == 0, desk.t.events[-3:]


@pytest.mark.parametrize("lang", languages("desk", "trader"))
def test_a_reader_too_slow_for_its_stream_is_dropped_and_closed(start_role, registry, lang):
    """A stream that does not read while big lines flow (3000 chat commands of 4000 bytes, about
    12 MB: more than its 1000-message queue and the TCP buffers hold): the desk drops what does not
    fit and closes the stream once the reader reads again; every post is answered meanwhile, and
    a new stream gets a fresh replay."""
    desk, port = start_desk(start_role, lang)
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: a small window
    slow.connect(("127.0.0.1", port))
    slow.sendall(get("/events"))
    text = b"x" * 4000
    for _ in range(3000):  # bounded in count; each post is answered before the next is sent
        assert exchange(port, post("/chat", text))[0] == 204
    # The reader reads at last: what was queued, then the desk's close (a reset, for a library that
    # resets: what was still in flight is lost, and the last line may be cut).
    received = drain(slow, closes_gracefully(registry, lang))
    published = [e for e in desk.t.events if e["event"] != "result"]
    stream = received[received.index(b"\r\n\r\n") + 4:]
    got = events_of(stream[: stream.rfind(b"\n\n") + 2])
    assert len(got) < len(published), f"all {len(got)} lines reached a reader that did not read"
    assert got == published[: len(got)], "the stream is not the desk's lines in order up to the drop"
    sock, data = open_stream(port)  # a new stream: a fresh replay, ending with the latest lines
    with sock:
        read_until(sock, data, lambda e: e == published[-1])
    desk.terminate()
    assert desk.wait_exit(time.monotonic() + WAIT) and desk.t.exit_code == 0


def drain(sock, graceful):
    """Everything until the desk closes the connection (a timeout fails the test)."""
    data = b""
    sock.settimeout(WAIT)
    try:
        while chunk := sock.recv(1 << 20):
            data += chunk
    except ConnectionResetError:
        assert not graceful, "a reset, where the registry says the library closes gracefully"
    return data


@pytest.mark.parametrize("lang", languages("desk", "trader"))
@pytest.mark.parametrize("endpoint", ["ipc:///tmp/desk-page", "127.0.0.1:8080", "tcp://"])
def test_a_page_endpoint_that_is_not_tcp_exits_2(start_role, lang, endpoint):
    role = start_role(lang, "desk", "trader", **desk_flags(http=endpoint))
    assert role.wait_exit(time.monotonic() + WAIT)
    assert role.t.exit_code == 2 and role.t.events == [], role.t.events[:3]


@pytest.mark.parametrize("lang", languages("desk", "trader"))
def test_a_page_port_in_use_fails_before_any_thread_starts(start_role, lang):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        role = start_role(lang, "desk", "trader", **desk_flags(http=f"tcp://127.0.0.1:{taken.getsockname()[1]}"))
        assert role.wait_exit(time.monotonic() + WAIT)
    assert role.t.exit_code == 1 and [e["event"] for e in role.t.events] == ["error"], role.t.events[:3]
    assert role.t.events[0]["code"] == "bind"


def test_invoke_run_desk_open_serves_a_person_and_checks_what_they_did(built):
    """`invoke run desk --open` with a person (this test, with a raw client): the address is
    printed, the person's Forget, Follow, trade and post are the scenario, and the verdict checks
    them (the chat checker sees the post reach the other trader). Each role in the first language
    of the registry that implements it (the services: every program of the server's column)."""
    chosen = {"desk": first_language([("desk", "trader")]), "server": services_language(load_spec(ROOT / "examples" / "desk" / "page.yaml")),
              "client": first_language([("chat", "client")])}
    for lang in set(chosen.values()):
        built[lang]
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}  # no browser to open
    languages_given = [arg for role, lang in chosen.items() for arg in (f"--{role}", lang)]
    run = subprocess.Popen([str(ROOT / ".venv" / "bin" / "invoke"), "run", "desk", "--open", "--no-build", *languages_given], cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        url = next(line for line in run.stdout if b"The desk's page: http://" in line).split(b"page: ")[1].strip().decode()
        port = int(url.rstrip("/").rsplit(":", 1)[1])
        sock, data = open_stream(port)
        with sock:
            assert exchange(port, post("/forget", b"GOOG"))[0] == 204
            assert exchange(port, post("/follow", b"IBM"))[0] == 204
            # The desk's checker wants 5 ticks of every symbol followed at the end (page.yaml).
            read_until(sock, data, lambda e: e["event"] == "tick" and e["symbol"] == "IBM", count=5)
            assert exchange(port, post("/value", b"50"))[0] == 204
            assert exchange(port, post("/chat", "a person's post ✓".encode()))[0] == 204
        output = run.stdout.read().decode()
        assert run.wait(WAIT) == 0, output[-2000:]
        assert "verdict: pass" in output, output[-2000:]
    finally:
        if run.poll() is None:
            os.killpg(run.pid, 9)
            run.wait()

