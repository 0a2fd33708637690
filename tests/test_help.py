"""`btb --help` (examples/README.md, "Help: one text, six programs"): examples/help.txt is what the
PROTOCOL.md tables give, and every language prints each of its sections byte for byte."""
import subprocess

import pytest

from conftest import REGISTRY
from orchestrator import helptext

EXAMPLES = helptext.load(REGISTRY)
TEXT = helptext.HELP_PATH.read_text()


def test_help_file_is_what_the_tables_give():
    assert helptext.render(EXAMPLES) == TEXT, "examples/help.txt is stale: run `invoke help`"


def test_every_role_of_every_registry_entry_has_a_section():
    for name in REGISTRY.names():
        for example, roles in REGISTRY[name].implements.items():
            for role in roles:
                assert helptext.section(TEXT, [example, role]), f"{name} implements {example} {role}: no help"


def test_every_flag_says_its_default_and_every_millisecond_flag_its_unit():
    for example in EXAMPLES:
        for flag in example.flags:
            assert flag.default, (example.name, flag.name)
            if flag.value == "MS":
                assert "milliseconds" in flag.meaning, (example.name, flag.name)


def test_sections_are_found_as_the_contract_says():
    assert helptext.section(TEXT, []).startswith("usage: btb <example> <role>")
    assert helptext.section(TEXT, ["chat", "client"]).startswith("usage: btb chat client ")
    assert "--heartbeat MS" in helptext.section(TEXT, ["chat", "server"])
    assert "--heartbeat" not in helptext.section(TEXT, ["chat", "client"])
    assert helptext.section(TEXT, ["chat", "nosuch"]) is None


def test_a_table_the_generator_cannot_read_is_a_clear_error():
    with pytest.raises(helptext.TableError, match="unknown roles"):
        helptext.flag_rows([["server, nosuch", "`--x N`", "x", "1"]], {"server": ""}, "doc.md")
    with pytest.raises(helptext.TableError, match="not one `--flag VALUE`"):
        helptext.flag_rows([["server", "`--x`, `--y`", "x", "1"]], {"server": ""}, "doc.md")


def btb(lang, *args):
    language = REGISTRY[lang]
    language.run_build()
    argv = [language.expand(part) for part in language.launch] + list(args)
    return subprocess.run(argv, env=language.environment(), capture_output=True, timeout=60)


MAYBE = "maybe"


def cases(lang):
    """(argv, the section expected on stdout, None for exit 2 and nothing on stdout, or MAYBE for a
    role the registry does not list: the program may still have it, then it prints its section)."""
    implements = REGISTRY[lang].implements
    yield ["--help"], []
    yield ["-h"], []
    for example in EXAMPLES:
        yield [example.name, "--help"], [example.name]
        for role in example.roles:
            yield [example.name, role, "--help"], [example.name, role] if role in implements.get(example.name, ()) else MAYBE
    yield ["chat", "client", "--name", "ann", "-h"], ["chat", "client"]  # after a flag and its value
    yield ["chat", "client", "--name", "ann", "--count", "3", "--help"], ["chat", "client"]
    yield ["ticker", "encode", "--seed", "--help"], None  # a flag's value, not a request for help
    yield ["query", "derive", "--symbol", "-h", "--prices", "00"], None
    yield ["chat", "nosuch", "--help"], None
    yield ["nosuch", "--help"], None
    yield ["chat", "server", "extra", "--help"], None


@pytest.mark.parametrize("lang", REGISTRY.names())
def test_every_language_prints_the_same_help(lang):
    wrong = []
    for argv, words in cases(lang):
        done = btb(lang, *argv)
        if words is MAYBE:
            words = argv[:2] if done.returncode == 0 else None
        expected = None if words is None else helptext.section(TEXT, words).encode()
        if expected is None:
            if done.returncode != 2 or done.stdout:
                wrong.append(f"btb {' '.join(argv)}: exit {done.returncode}, stdout {done.stdout[:80]!r}, want exit 2 and nothing")
        elif done.returncode != 0 or done.stdout != expected:
            wrong.append(f"btb {' '.join(argv)}: exit {done.returncode}, stdout {len(done.stdout)} bytes "
                         f"{'equal' if done.stdout == expected else 'different'}, want exit 0 and the section's "
                         f"{len(expected)} bytes; stderr {done.stderr[-200:]!r}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("lang", REGISTRY.names())
def test_a_value_that_looks_like_help_is_a_value(lang):
    """`--name --help` names a client `--help` (examples/README.md): it runs, and times out alone."""
    done = btb(lang, "chat", "client", "--name", "--help", "--requests", "tcp://127.0.0.1:1",
               "--broadcasts", "tcp://127.0.0.1:1", "--timeout", "300")
    last = done.stdout.decode().splitlines()[-1:]
    assert done.returncode == 1 and last and '"timeout"' in last[0], (done.returncode, done.stdout, done.stderr[-300:])
