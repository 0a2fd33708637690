"""The launch contract's rules that hold for every role (examples/README.md), checked in every
language from the documents themselves: every numeric flag's range as its PROTOCOL.md row gives it,
and arguments read as UTF-8 whatever the locale."""
import re
import subprocess
import time

import pytest

from conftest import REGISTRY, first_language, languages
from orchestrator import helptext
from orchestrator.runner import RoleProcess, RoleTranscript

EXAMPLES = helptext.load(REGISTRY)
# A good value for each required flag, so that a case fails on the flag under test alone.
GOOD = {"name": "ann", "symbols": "AAPL", "subtrees": "all", "seed": "1", "symbol": "AAPL", "sequence": "1",
        "timestamp": "1", "prices": "0000000000000000", "id": "1"}
U64, I64 = 1 << 64, 1 << 63
SYMBOLS_33 = ",".join([chr(65 + i) for i in range(26)] + [f"A{chr(65 + i)}" for i in range(7)])  # A..Z, AA..AG


def out_of_range(meaning):
    """The values just outside the range a flag's meaning states, or none for a flag without one."""
    values = []
    if match := re.search(r"\bat least (\d+)", meaning):
        values.append(int(match[1]) - 1)
    if re.search(r"\b0 or more\b", meaning):
        values.append(-1)
    if match := re.search(r"\b(\d+)(?: \([^)]*\))? to (\d+)\b(?! (?:bytes|of|symbols))", meaning):
        values += [int(match[1]) - 1, int(match[2]) + 1]
    if "unsigned 64-bit" in meaning:
        values += [-1, U64]
    if "signed 64-bit" in meaning and "unsigned" not in meaning:
        values += [I64, -I64 - 1]
    return values


def bad_values(meaning):
    """Every value the flag's row rules out that the test tries: out of range, or a list that
    breaks its stated shape (a symbol twice, too many symbols)."""
    values = [str(value) for value in out_of_range(meaning)]
    if "1 to 32 symbols, none twice" in meaning:
        values += ["AAPL,GOOG,AAPL", SYMBOLS_33]
    return values


def cases(lang):
    """(example, role, flag, bad value, the other flags) for every ranged flag the language has."""
    for example in EXAMPLES:
        for role in example.roles:
            if not REGISTRY[lang].supports(example.name, role):
                continue
            flags = [flag for flag in example.flags if role in flag.roles]
            required = {flag.name: GOOD[flag.name[2:]] for flag in flags if flag.default == "required"}
            if any(flag.name == "--timeout" for flag in flags):
                required["--timeout"] = "1000"  # a role that wrongly starts ends at once
            for flag in flags:
                choices = ["yes", "ON"] if flag.value == "on/off" else []  # --monitor: on or off, nothing else
                for value in bad_values(flag.meaning) + choices:
                    yield example.name, role, flag.name, value, {**required, flag.name: value}


def test_the_tables_give_ranges_to_check():
    """The parsing above finds the ranges the tables state (a sample of them)."""
    assert out_of_range("time between roster broadcasts, in milliseconds, at least 1") == [0]
    assert out_of_range("posts to send, 0 or more") == [-1]
    assert out_of_range("the ttl of the even-numbered writes, in seconds, 1 to 86400") == [0, 86401]
    assert out_of_range("orders in the trade, 0 (no trade) to 1000000") == [-1, 1000001]
    assert out_of_range("the client's handle: 1 to 32 bytes of UTF-8") == []
    assert out_of_range("the price seed, an unsigned 64-bit integer") == [-1, U64]
    assert bad_values("comma-separated symbols to follow at start (ticker's syntax: 1 to 32 symbols, none twice)") \
        == ["AAPL,GOOG,AAPL", SYMBOLS_33]
    assert len(SYMBOLS_33.split(",")) == len(set(SYMBOLS_33.split(","))) == 33
    assert len(list(cases("python"))) > 60
    assert ("chat", "server", "--monitor", "yes") in [case[:4] for case in cases("python")]


def btb(lang, args, **env):
    language = REGISTRY[lang]
    argv = [language.expand(part) for part in language.launch] + args
    return subprocess.run(argv, env={**language.environment(), **env}, capture_output=True, timeout=60)


@pytest.mark.parametrize("lang", languages())
def test_every_flag_refuses_a_value_its_row_rules_out(built, lang):
    built[lang]
    wrong = []
    for example, role, flag, value, flags in cases(lang):
        done = btb(lang, [example, role] + [part for name, given in flags.items() for part in (name, given)])
        if done.returncode != 2 or done.stdout:
            wrong.append(f"btb {example} {role} {flag} {value}: exit {done.returncode}, stdout {done.stdout[:100]!r}")
    assert not wrong, f"{len(wrong)} values outside a flag's range were taken:\n" + "\n".join(wrong)


@pytest.mark.parametrize("lang", languages("chat", "client"))
def test_arguments_are_utf8_whatever_the_locale(built, start_role, tmp_path, lang):
    """A client named chloé, started with no locale at all: the server receives the 6 UTF-8 bytes."""
    server = start_role(first_language([("chat", "server")]), "chat", "server", requests="tcp://127.0.0.1:*", broadcasts="tcp://127.0.0.1:*",
                        timeout=30000)
    ready = server.wait_event("ready", time.monotonic() + 30)
    flags = {"requests": ready["requests"], "broadcasts": ready["broadcasts"], "name": "chloé", "count": 1, "timeout": 30000}
    language = built[lang]
    transcript = RoleTranscript("client", 0, lang, flags, language.command("chat", "client", flags),
                                events_path=tmp_path / "client.jsonl", stderr_path=tmp_path / "client.stderr")
    env = {key: value for key, value in language.environment().items() if not key.startswith(("LC_", "LANG"))}
    client = RoleProcess(transcript, {**env, "LC_ALL": "C"}, None)
    try:
        assert client.wait_exit(time.monotonic() + 30) and client.t.exit_code == 0, client.t.events
    finally:
        client.reap()
    server.terminate()
    assert server.wait_exit(time.monotonic() + 10)
    assert {"event": "joined", "handle": "chloé"} in server.t.events, server.t.events
