"""What a reader finds where (orchestrator/reading.py): a tagged comment for every concept an example
puts to work (examples/concepts.yaml), in every language, and a reading guide in every example's
PROTOCOL.md whose every cell names a function the language really defines."""
from pathlib import Path

import pytest

from conftest import LANGS, REGISTRY
from orchestrator import reading
from orchestrator.config import ConfigError

EXAMPLES = ("chat", "ticker", "valuation", "query", "desk")


@pytest.fixture(scope="module")
def notes():
    return reading.survey(REGISTRY)


@pytest.mark.parametrize("lang", LANGS)
def test_every_concept_at_work_has_its_note(notes, lang):
    mine = [note for note in notes if note.language == lang]
    assert mine, f"{lang}: no concept applies: does the registry list its sources?"
    missing = [f"[{n.concept}] in {n.place}: {n.detail}" for n in mine if n.status == "missing"]
    assert not missing, "\n".join(missing)


def test_every_example_and_shared_file_is_surveyed(notes):
    places = {note.place for note in notes}
    assert places == set(EXAMPLES) | set(reading.SHARED)
    # Every concept is at work somewhere, and noted there in at least one language.
    assert {note.concept for note in notes if note.status == "present"} == {c.tag for c in reading.load_concepts()}


def test_a_tag_counts_only_at_the_start_of_a_comment(tmp_path):
    cases = {
        "a.py": ("x.linger = 0  # [linger] 0: drop what is queued\n", 'print("[linger]")\n# about [linger]\n'),
        "a.c": ("/* [HWM] at 1000 PUB drops */\n", 'puts("[HWM]"); // see [HWM]\n'),
        "a.rs": ("    // [poll] then a non-blocking receive\n", 'let s = "[poll]";\n'),
        "a.cs": ("/// [REQ] strict lockstep\n", 'var tag = "[REQ]";\n'),
        "a.fs": ("// [multipart] whole or nothing\n", 'let tag = "[multipart]"\n(* [multipart] *)\n'),
        "a.vb": ("' [max size] from the protocol\n", 'Dim tag = "[max size]"\n'),
    }
    for name, (noted, unnoted) in cases.items():
        tag = noted.split("[")[1].split("]")[0]
        (tmp_path / name).write_text("int x;\n" + noted)
        assert reading.find_note(tmp_path / name, tag) == 2, name
        (tmp_path / name).write_text(unnoted)
        assert reading.find_note(tmp_path / name, tag) is None, name


def test_a_language_lacking_a_feature_owes_no_note_for_it_where_the_feature_is_at_work(notes):
    """NetMQ has no ZAP and no steerable proxy: the .NET programs owe no [ZAP] note, and no [PAIR]
    note in the ticker (its proxy has no control pipe), but one in the desk (the agents' pipes)."""
    excused = {(n.concept, n.place, n.language) for n in notes if n.status == "not-required"}
    for name in LANGS:
        lacks = REGISTRY[name].lacks
        assert (("ZAP", "security", name) in excused) == ("zap" in lacks)
        assert (("PAIR", "ticker", name) in excused) == ("steerable-proxy" in lacks)
        assert ("PAIR", "desk", name) not in excused


@pytest.mark.parametrize("entry, field", [
    ("REQ: {says: lockstep, in: [chat, security]}", "concepts.REQ.in"),
    ("REQ: {says: lockstep, in: [chat], colour: red}", "concepts.REQ.colour"),
    ("PAIR: {says: one peer, in: [desk], unless: {steerable-proxy: [ticker]}}", "concepts.PAIR.unless.steerable-proxy"),
    ("PAIR: {says: one peer, in: [desk], unless: {telepathy: [desk]}}", "concepts.PAIR.unless.telepathy"),
])
def test_the_concepts_file_is_checked(tmp_path, entry, field):
    bad = tmp_path / "concepts.yaml"
    bad.write_text(f"concepts:\n  {entry}\n")
    with pytest.raises(ConfigError, match=field):
        reading.load_concepts(bad)


# --- the reading guides ------------------------------------------------------------------------


@pytest.mark.parametrize("example", EXAMPLES)
def test_every_example_has_a_reading_guide_with_a_column_per_language(example):
    steps = reading.read_guide(example)
    assert len(steps) >= 5, f"examples/{example}/PROTOCOL.md: no reading guide of 5 steps or more"
    implementing = {name for name in LANGS if example in REGISTRY[name].implements}
    for step in steps:
        assert implementing <= set(step.names), f"{step.step}: no column for {implementing - set(step.names)}"
        assert all(step.names[name] for name in implementing), step


@pytest.mark.parametrize("lang", LANGS)
@pytest.mark.parametrize("example", EXAMPLES)
def test_every_function_a_guide_names_is_defined_there(example, lang):
    language = REGISTRY[lang]
    if example not in language.implements:
        pytest.skip(f"{lang} does not implement {example}")
    steps = reading.read_guide(example)
    if steps and lang not in steps[0].names:
        # A language trying the registry out (invoke conform) before its column is written: the
        # column test above fails for a registry language without one.
        pytest.skip(f"examples/{example}/PROTOCOL.md's reading guide has no {lang} column yet (README, Adding a language)")
    undefined = [f"{step.step}: {step.names.get(lang)}" for step in steps
                 if not step.names.get(lang) or not reading.find_definition(language, example, step.names[lang])]
    assert not undefined, "\n".join(undefined)


def test_the_definition_finder_tells_a_definition_from_a_call(tmp_path):
    cases = {
        ".py": ("def run_server(args):\n", "run_server(args)\n"),
        ".c": ("static int run_server(args_t *args)\n{\n", "    run_server(&args);\n"),
        ".rs": ("pub fn run_server(args: &Args) -> i32 {\n", "    run_server(&args);\n"),
        ".cs": ("    static void RunServer(ServerArgs args)\n", "        RunServer(args);\n        return RunServer(a);\n"),
        ".fs": ("let runServer (args: ServerSettings) =\n", "    runServer args\n"),
        ".vb": ("    Private Sub RunServer(args As ServerArgs)\n", "        RunServer(args)\n"),
    }
    for suffix, (defined, called) in cases.items():
        name = "run_server" if suffix in (".py", ".c", ".rs") else "runServer" if suffix == ".fs" else "RunServer"
        assert reading.definition(suffix, name).search(defined), suffix
        assert not reading.definition(suffix, name).search(called), suffix
