"""What a reader finds where: the concept notes of examples/concepts.yaml, and the reading guide of
every example's PROTOCOL.md (one request walked through the six programs by function name).

Both are checks on the source files each language lists under `sources:` in the registry; the
tests (tests/test_concepts.py, tests/test_guide.py) and `invoke concepts` call them."""
import re
from dataclasses import dataclass

from . import ROOT
from .config import ConfigError, Fields, load_yaml
from .registry import FEATURES

CONCEPTS_PATH = ROOT / "examples" / "concepts.yaml"
# Where a concept is at work: an example's own file, or a file every example shares.
SHARED = ("security", "monitor")
# How a comment begins, by file suffix: a tag counts only inside a comment.
COMMENT = {".py": r"#", ".c": r"//|/\*+|^\s*\*", ".h": r"//|/\*+|^\s*\*", ".rs": r"//[/!]?",
           ".cs": r"///?", ".fs": r"///?", ".vb": r"'"}


@dataclass(frozen=True)
class Concept:
    tag: str
    says: str
    where: tuple  # examples, or one of SHARED
    unless: dict  # library feature (registry `lacks:`) -> the places where the note is not required without it


@dataclass(frozen=True)
class Note:
    """One cell of the concept table: a concept in one file of one language."""
    concept: str
    place: str  # an example, or security/monitor
    language: str
    status: str  # present, missing, not-required
    detail: str  # file:line of the note, or the reason it is not required


def load_concepts(path=CONCEPTS_PATH):
    data = load_yaml(path)
    fields = Fields(path, data)
    fields.only("concepts")
    concepts = []
    for tag, entry in fields.get("concepts", dict, required=True).items():
        if not isinstance(entry, dict):
            raise ConfigError(path, f"concepts.{tag}", "must be a mapping")
        item = Fields(path, entry, f"concepts.{tag}")
        item.only("says", "in", "unless")
        where = item.strings("in", required=True)
        if not where or (set(where) & set(SHARED) and len(where) != 1):
            raise item.error("in", f"must list examples, or name one of {', '.join(SHARED)} alone")
        unless = item.get("unless", dict, {})
        for feature, places in unless.items():
            if feature not in FEATURES:
                raise item.error(f"unless.{feature}", f"unknown feature (features: {', '.join(FEATURES)})")
            if not isinstance(places, list) or not places or not set(places) <= set(where):
                raise item.error(f"unless.{feature}", f"must list some of the concept's places ({', '.join(where)})")
        concepts.append(Concept(str(tag), item.get("says", str, required=True), tuple(where), unless))
    return concepts


def comment_tag(suffix, tag):
    """A regex finding `[tag]` at the start of a comment's text in a file of that suffix."""
    return re.compile(rf"(?:{COMMENT[suffix]})\s*\[{re.escape(tag)}\]", re.MULTILINE)


def find_note(path, tag):
    """The 1-based line of the first comment beginning with [tag] in `path`, or None."""
    text = path.read_text(encoding="utf-8")
    match = comment_tag(path.suffix, tag).search(text)
    return text.count("\n", 0, match.start()) + 1 if match else None


def survey(registry, concepts=None):
    """Every cell of the concept table, for every language of the registry."""
    concepts = load_concepts() if concepts is None else concepts
    notes = []
    for concept in concepts:
        for language in registry.languages.values():
            places = concept.where if concept.where[0] not in SHARED else (concept.where[0],)
            for place in places:
                if place in SHARED:
                    path = language.source(place)
                elif place in language.implements:
                    path = language.source("example", place)
                else:
                    continue  # the language does not implement the example
                notes.append(_note(concept, place, language, path))
    return notes


def _note(concept, place, language, path):
    def note(status, detail):
        return Note(concept.tag, place, language.name, status, detail)

    lacking = next((feature for feature, places in concept.unless.items()
                    if feature in language.lacks and place in places), None)
    if lacking:
        return note("not-required", f"lacks {lacking}: {language.lacks[lacking]}")
    if path is None:
        return note("missing", f"the registry lists no `{place if place in SHARED else 'example'}` source")
    if not path.is_file():
        return note("missing", f"{path.relative_to(ROOT)} does not exist")
    line = find_note(path, concept.tag)
    if line is None:
        return note("missing", f"no comment beginning with [{concept.tag}] in {path.relative_to(ROOT)}")
    return note("present", f"{path.relative_to(ROOT)}:{line}")


# --- the reading guides ------------------------------------------------------------------------

GUIDE_HEADING = "## Reading guide"


@dataclass(frozen=True)
class GuideStep:
    step: str
    names: dict  # language -> the function or method named in its column


def read_guide(example):
    """The reading guide table of examples/<example>/PROTOCOL.md: its steps, each with the function
    every language column names. [] when the document has no guide."""
    text = (ROOT / "examples" / example / "PROTOCOL.md").read_text(encoding="utf-8")
    start = text.find(f"\n{GUIDE_HEADING}\n")
    if start < 0:
        return []
    rows = []
    for line in text[start + len(GUIDE_HEADING) + 2:].splitlines():
        if line.startswith("## "):
            break
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif rows:
            break  # the table has ended
    if len(rows) < 3:
        return []
    header = [cell.lower() for cell in rows[0]]
    return [GuideStep(row[0], {header[i]: row[i].strip("`") for i in range(1, len(header))}) for row in rows[2:]]


def definition(suffix, name):
    """A regex finding where a function, method or type named `name` is defined, by file suffix."""
    n = re.escape(name)
    return re.compile({
        ".py": rf"^\s*(?:async\s+)?(?:def|class)\s+{n}\b",
        ".c": rf"^[A-Za-z_][^;=()]*\b{n}\s*\([^;]*$",
        ".rs": rf"\b(?:fn|struct|enum|impl)\s+{n}\b",
        ".cs": rf"^[ \t]*+(?!return\b|await\b|throw\b|new\b)[\w<>\[\],?.() ]*[\w>\]?)]\s+{n}\s*(?:<[^>]*>)?\s*\(|\b(?:class|record|struct)\s+{n}\b",
        ".fs": rf"\b(?:let|member|and|type)\s+(?:(?:rec|inline|private|mutable)\s+)*(?:\w+\.)?{n}\b",
        ".vb": rf"\b(?:Sub|Function|Class|Structure|Module)\s+{n}\b",
    }[suffix], re.MULTILINE)


def find_definition(language, example, name):
    """The file:line where the language defines `name` (`Type.member` looks for the member), in its
    example file first and then its shared sources; None if nowhere."""
    member = name.split(".")[-1]
    paths = [language.source("example", example)] + [language.source(kind) for kind in ("contract", *SHARED)]
    for path in filter(None, paths):
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            match = definition(path.suffix, member).search(text)
            if match:
                return f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, match.start()) + 1}"
    return None
