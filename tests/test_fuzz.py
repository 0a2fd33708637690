"""The hostile-peer battery (orchestrator/fuzz.py, `invoke fuzz`): its bytes, its rules, that it
can fail, the recorded library defects, and the battery itself against every language."""
import json
import subprocess
import sys
import time

import pytest

from conftest import LANGS, REGISTRY, languages
from orchestrator import ROOT, fuzz, zmtp
from orchestrator.checks.valuation import order_value
from orchestrator.config import ConfigError
from orchestrator.registry import Language, Registry, load_registry

WAIT = 30
# Every library defect written up under tests/defects: (its folder, whether it runs against a chat
# server, or is self-contained, its arguments).
REPRODUCTIONS = [
    ("netmq-empty-command", True, ["REQ"]),
    ("rep-reply-lost-after-orphaned-request", True, ["5"]),
    ("libzmq-proxy-unfinished-message", False, []),
]


def defective_server(defect):
    """The first language of the registry whose library has `defect` (its `defects:`) and that
    implements the chat server its reproduction talks to; None if there is none."""
    return next((name for name in LANGS if REGISTRY[name].supports("chat", "server")
                 and any(recorded.name == defect for recorded in REGISTRY[name].defects)), None)


def reproductions():
    """(defect, the language of the chat server or None, arguments) for the test below; a
    reproduction that needs a server no language of the registry can play is skipped."""
    for defect, served, args in REPRODUCTIONS:
        lang = defective_server(defect) if served else None
        missing = served and lang is None
        yield pytest.param(defect, lang, args, marks=[pytest.mark.skip(
            reason=f"no language of the registry records {defect} and implements chat server")] if missing else [])


def test_zmtp_bytes():
    assert len(zmtp.greeting()) == 64 and zmtp.greeting()[:12] == b"\xff" + b"\0" * 8 + b"\x7f\x03\x00"
    assert zmtp.greeting(mechanism=b"CURVE")[12:17] == b"CURVE"
    assert zmtp.header(0, 5) == b"\x00\x05"
    assert zmtp.header(zmtp.MORE, 300) == b"\x03" + (300).to_bytes(8, "big")
    assert zmtp.message([b"", b"ab"]) == b"\x01\x00\x00\x02ab"
    assert zmtp.command(b"PING") == b"\x04\x05\x04PING"
    assert zmtp.ready("REQ") == b"\x04\x19\x05READY\x0bSocket-Type\x00\x00\x00\x03REQ"


def test_the_reference_rules():
    assert fuzz.chat_expected([b"a", b"b", b"c"]) == "frame-count"
    assert fuzz.chat_expected([b"", b"\xff"]) == "empty-handle"
    assert fuzz.chat_expected([b"a", b"\xff"]) == "invalid-utf8"
    assert fuzz.chat_expected(["é".encode() * 16, b"x" * 4096]) == "unknown-handle"  # a post before a join
    assert fuzz.chat_expected(["é".encode() * 16, b"x" * 4096], {"é".encode() * 16}) is None
    assert fuzz.chat_expected(["é".encode() * 16]) is None  # the join itself
    counted = set()
    assert fuzz.sink_expected([b"ready", b"n" * 33], 7, 10, counted) == "malformed-ready"
    good = [b"result", b"w", (4).to_bytes(8, "big"), order_value(7, 4).to_bytes(8, "big", signed=True)]
    assert fuzz.sink_expected(good, 7, 10, counted) == "result"
    assert fuzz.sink_expected(good, 7, 10, counted) == "duplicate"
    forged = good[:3] + [(order_value(7, 4) + 1).to_bytes(8, "big", signed=True)]
    assert fuzz.sink_expected(forged, 7, 10, set()) == "wrong-value"
    assert fuzz.sink_expected(good[:2] + [(11).to_bytes(8, "big")] + good[3:], 7, 10, set()) == "unknown-id"
    kvset = [b"/a/b", b"\0" * 8, b"", b"ttl=5\nx=\n", b"v"]
    assert fuzz.kvset_expected(kvset) == "update"
    assert fuzz.kvset_expected(kvset[:3] + [b"ttl=1\nttl=2\n", b"v"]) == "malformed-kvset"
    assert fuzz.kvset_expected(kvset[:3] + [b"ttl=0\n", b"v"]) == "malformed-kvset"
    assert fuzz.kvset_expected([b"/a/"] + kvset[1:]) == "malformed-kvset"
    assert fuzz.kvset_expected(kvset[:4] + [b"v" * 257]) == "malformed-kvset"
    assert fuzz.icanhaz_expected([b"ICANHAZ?", b""]) == fuzz.icanhaz_expected([b"ICANHAZ?", b"/a/b/"]) == "snapshot"
    assert fuzz.icanhaz_expected([b"ICANHAZ?", b"/a"]) == fuzz.icanhaz_expected([b"ICANHAZ?"]) == "malformed-icanhaz"


def test_every_defect_names_its_reproduction(tmp_path):
    """Every write-up under tests/defects has its reproduction, and runs in the test below; every
    registry entry points to one of them and to attacks and roles the battery has."""
    folders = {path.name for path in (ROOT / "tests/defects").iterdir() if path.is_dir()}
    for folder in folders:
        assert (ROOT / "tests/defects" / folder / "README.md").exists() and (ROOT / "tests/defects" / folder / "reproduce.py").exists()
    assert folders == {defect for defect, _, _ in REPRODUCTIONS}
    registry = load_registry()
    for name in registry.names():
        for defect in registry[name].defects:
            assert defect.reproduction == f"tests/defects/{defect.name}" and defect.name in folders
            assert set(defect.attacks) <= set(fuzz.attack_names()) and set(defect.targets) <= set(fuzz.TARGETS)
    path = tmp_path / "languages.yaml"
    path.write_text(json.dumps({"x": {"launch": ["/bin/true"], "implements": {}, "defects": {
        "d": {"attacks": ["garbage"], "reason": "r", "reproduction": "tests/defects/nowhere"}}}}))
    with pytest.raises(ConfigError, match="does not exist"):
        load_registry(path)


def test_the_battery_finds_a_server_that_blocks_after_its_poll(tmp_path):
    """A server that polls, then receives with a blocking call, wedges on a request without the
    delimiter frame: the battery must say `hung`, and `survived` for an attack it does withstand."""
    script = ROOT / "tests/fixtures/wedging_chat_server.py"
    fragile = Language("fragile", [], [sys.executable, str(script)], {}, {"chat": {"server"}})
    registry = Registry({"fragile": fragile})
    outcomes = fuzz.run_battery(registry, ["chat-server"], ["greetings", "huge-declared"], ["fragile"], tmp_path, parallel=2)
    status = {o.attack: (o.status, o.detail) for o in outcomes}
    assert status == {"greetings": ("hung", "a correct subscriber got no broadcast (no heartbeat)"),
                      "huge-declared": ("survived", "")}, status
    assert fuzz.failed(outcomes)


def _serve_chat(built, lang):
    language = built[lang]
    flags = {"requests": "tcp://127.0.0.1:*", "broadcasts": "tcp://127.0.0.1:*", "timeout": 120000}
    server = subprocess.Popen(language.command("chat", "server", flags), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              env=language.environment(), text=True, start_new_session=True)
    return server, json.loads(server.stdout.readline())["requests"].removeprefix("tcp://")


@pytest.mark.parametrize("defect, lang, args", list(reproductions()))
def test_a_recorded_defect_still_shows(built, defect, lang, args):
    """The write-ups stay true: the day a library release fixes a defect, this fails, and its
    `defects:` entry (or, for the proxy, the restart) can go."""
    server, endpoint = _serve_chat(built, lang) if lang else (None, None)
    try:
        # Up to three runs: the lost reply needs the orphan's hang-up to reach the server before REP
        # reads its request, a race that a loaded CI machine once lost 5 rounds in a row.
        outputs = []
        for _ in range(3):
            done = subprocess.run([sys.executable, str(ROOT / "tests/defects" / defect / "reproduce.py"), *filter(None, [endpoint]), *args],
                                  capture_output=True, text=True, timeout=60)
            outputs.append(done.stdout + done.stderr)
            if done.returncode == 0:
                break
        assert done.returncode == 0, "\n".join(outputs)
    finally:
        if server:
            server.kill()
            server.wait()


@pytest.mark.fuzz
@pytest.mark.parametrize("lang", languages())
def test_every_role_that_binds_survives_the_battery(built, lang, tmp_path):
    """The whole battery, one language at a time: every cell `survived`, or a recorded defect. The
    battery attacks the roles the language implements (implements: in the registry)."""
    registry = load_registry()
    targets = [name for name, target in fuzz.TARGETS.items() if registry[lang].supports(target.example, target.role)]
    if not targets:
        pytest.skip(f"{lang} implements none of the roles the battery attacks ({', '.join(fuzz.TARGETS)})")
    built[lang]
    started = time.monotonic()
    outcomes = fuzz.run_battery(registry, targets, fuzz.attack_names(), [lang], tmp_path, parallel=3)
    assert len(outcomes) == sum(len(fuzz.attacks_of(fuzz.TARGETS[t])) for t in targets)
    broken = [f"{o.target} {o.attack}: {o.status}: {o.detail}" for o in fuzz.failed(outcomes)]
    assert not broken, "\n".join(broken) + f"\n(logs in {tmp_path}, {time.monotonic() - started:.0f} s)"
