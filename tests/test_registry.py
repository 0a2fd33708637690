"""The language registry: entries, launch commands, unsupported and known-failure cells."""
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml

from conftest import languages, require
from orchestrator import ROOT
from orchestrator.config import ConfigError
from orchestrator.registry import REGISTRY_PATH, STAMPS, Language, load_registry


# The name is historical: every language of the registry, however many, is checked (a language that
# trims chat from its `implements:` is skipped with the registry's reason).
@pytest.mark.parametrize("lang", languages("chat", "server"))
def test_all_six_languages_implement_both_chat_roles(registry, lang):
    assert registry.names() == list(yaml.safe_load(REGISTRY_PATH.read_text()))  # every entry of the file, in its order
    require(lang, "chat", "client")  # the second role of the name
    assert registry[lang].supports("chat", "server")
    assert registry[lang].supports("chat", "client")
    assert not registry[lang].supports("chat", "referee")


def test_launch_follows_the_contract(registry):
    argv = registry["rust"].command("chat", "client", {"name": "alice", "count": 5})
    assert argv == [str(ROOT / "rust/target/release/btb"), "chat", "client", "--name", "alice", "--count", "5"]
    python = registry["python"]
    assert python.command("chat", "server", {})[-4:] == ["-m", "btb", "chat", "server"]
    assert python.environment()["PYTHONPATH"] == str(ROOT / "python")


def test_unknown_language_is_a_clear_error(registry):
    with pytest.raises(KeyError, match="unknown language 'cobol'"):
        registry["cobol"]


def write(tmp_path, data):
    path = tmp_path / "languages.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


ENTRY = {"launch": ["/bin/true"], "implements": {"chat": ["server", "client"]}}


def test_unsupported_and_known_failures(tmp_path):
    data = {
        "a": dict(ENTRY, known_failures=[{"example": "chat", "roles": {"server": "a", "client": "b"}, "reason": "a cannot hear b"}]),
        "b": dict(ENTRY, implements={"chat": ["client"]}),
    }
    registry = load_registry(write(tmp_path, data))
    assert registry.unsupported({("chat", "server"): {"b"}, ("chat", "client"): {"a"}}) == "b does not implement chat server"
    assert registry.unsupported({("chat", "server"): {"a"}, ("chat", "client"): {"a", "b"}}) is None
    assert registry.known_failure("chat", {"server": {"a"}, "client": {"a", "b"}}).reason == "a cannot hear b"
    assert registry.known_failure("chat", {"server": {"a"}, "client": {"a"}}) is None
    assert registry.known_failure("ticker", {"server": {"a"}, "client": {"b"}}) is None


@pytest.mark.parametrize(
    "data, field",
    [
        ({"a": {"implements": {"chat": ["server"]}}}, "a.launch"),
        ({"a": dict(ENTRY, launch=[])}, "a.launch"),
        ({"a": dict(ENTRY, implements={"chat": "server"})}, "a.implements.chat"),
        ({"a": dict(ENTRY, build=["make"])}, "a.build[0]"),
        ({"a": dict(ENTRY, colour="red")}, "a.colour"),
        ({"a": dict(ENTRY, known_failures=[{"example": "chat", "roles": {"server": "a"}}])}, "a.known_failures[0].reason"),
        ({"a": dict(ENTRY, known_failures=[{"example": "chat", "roles": {"server": "zz"}, "reason": "r"}])}, "a.known_failures"),
        ({"a": dict(ENTRY, untuned={"launch": []})}, "a.untuned.launch"),
        ({"a": dict(ENTRY, untuned={"launch": ["x"], "env": {"A": 1}})}, "a.untuned.env"),
        ({"a": dict(ENTRY, untuned={"launch": ["x"], "flags": []})}, "a.untuned.flags"),
        ({"a": dict(ENTRY, lacks={"zap": ""})}, "a.lacks.zap"),
        ({"a": dict(ENTRY, lacks={"telepathy": "none"})}, "a.lacks.telepathy"),
        ({"a": dict(ENTRY, sources={"tests": "a/tests.x"})}, "a.sources.tests"),
        ({"a": dict(ENTRY, sources={"example": 3})}, "a.sources.example"),
    ],
)
def test_malformed_registry_names_the_field(tmp_path, data, field):
    path = write(tmp_path, data)
    with pytest.raises(ConfigError, match=f"^{path}: {field.replace('[', '.').replace(']', '.')}"):
        load_registry(path)


def test_an_untuned_way_is_the_same_language_launched_otherwise(tmp_path):
    """invoke bench --untuned: the language keeps its name, roles and environment; only the launch
    command and the variables the untuned way sets change."""
    path = write(tmp_path, {"a": dict(ENTRY, env={"KEEP": "1", "MODE": "tuned"},
                                      untuned={"launch": ["plain", "{root}/x"], "env": {"MODE": "default"}}),
                            "b": ENTRY})
    registry = load_registry(path)
    plain = registry["a"].as_untuned()
    assert plain.name == "a" and plain.implements == registry["a"].implements
    assert plain.command("chat", "server", {}) == ["plain", f"{ROOT}/x", "chat", "server"]
    assert plain.environment()["MODE"] == "default" and plain.environment()["KEEP"] == "1"
    assert plain.as_untuned() is None and registry["b"].as_untuned() is None


def test_a_build_is_skipped_while_its_inputs_and_its_program_are_unchanged():
    """invoke build: a language is built again when an input changes, when its program is gone,
    or when forced; not otherwise."""
    folder = Path(tempfile.mkdtemp(dir=ROOT / "runs"))
    source, program, log = folder / "main.src", folder / "program", folder / "builds.log"
    language = Language(f"test-{folder.name}", [["sh", "-c", f"echo built >> {log} && touch {program}"]],
                        [str(program)], {}, {}, inputs=[str(folder.relative_to(ROOT) / "*.src")])
    try:
        source.write_text("one")
        assert language.run_build() and not language.run_build()
        source.write_text("two")
        assert language.run_build() and not language.run_build()
        program.unlink()
        assert language.run_build() and not language.run_build()
        assert language.run_build(force=True)
        assert log.read_text().count("built") == 4
    finally:
        shutil.rmtree(folder)
        (STAMPS / f"{language.name}.sha256").unlink(missing_ok=True)
