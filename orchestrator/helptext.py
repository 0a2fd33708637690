"""`btb --help`, written once for six languages: examples/help.txt is generated from the tables of
the examples' PROTOCOL.md files and of the launch contract (examples/README.md, "Help"), and every
language embeds it and prints one of its sections. `invoke help` writes it; a test checks that it
is current and that every language prints it byte for byte."""
import re
import textwrap
from dataclasses import dataclass

from . import ROOT

EXAMPLES_DIR = ROOT / "examples"
HELP_PATH = EXAMPLES_DIR / "help.txt"
CONTRACT = EXAMPLES_DIR / "README.md"
WIDTH = 100  # the longest line of the help text
HEADER = re.compile(r"\[btb( [a-z-]+){0,2}\]")  # a section's header line: [btb], [btb chat], [btb chat server]


class TableError(ValueError):
    """A table the generator cannot read: the message names the file and the row."""


@dataclass(frozen=True)
class Flag:
    roles: tuple
    name: str  # --requests
    value: str  # EP
    meaning: str
    default: str  # "required", "none", "empty" or the value itself


@dataclass
class Example:
    name: str
    title: str
    roles: dict  # role -> what it does, in the document's order
    flags: list  # Flag, in the document's order


def plain(cell):
    """Markdown to the help's plain text: no backticks, no links."""
    cell = re.sub(r"\[([^\]]+)\]\([^)]*\)", r"\1", cell)
    return cell.replace("`", "").strip()


def tables(text, path):
    """Every table of a Markdown document: (section heading, header cells, rows of cells)."""
    heading, found, rows = "", [], None
    for number, line in enumerate(text.splitlines() + [""], 1):
        if line.startswith("## "):
            heading = line[3:].strip()
        if line.lstrip().startswith("|"):
            cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip()[1:-1])]
            if rows is None:
                rows = [cells]
            elif not set("".join(cells)) <= set("- "):
                if len(cells) != len(rows[0]):
                    raise TableError(f"{path}:{number}: {len(cells)} cells under {len(rows[0])} columns")
                rows.append(cells)
        elif rows is not None:
            found.append((heading, rows[0], rows[1:]))
            rows = None
    return found


def flag_rows(rows, roles, path):
    """Rows of a `| role | flag | meaning | default |` table as Flags."""
    flags = []
    for role_cell, flag_cell, meaning, default in rows:
        named = tuple(plain(role) for role in role_cell.split(","))
        unknown = [role for role in named if role not in roles]
        match = re.fullmatch(r"`(--[a-z-]+) ([^`]+)`", flag_cell)
        if unknown or not match:
            raise TableError(f"{path}: flag row {flag_cell!r}: "
                             + (f"unknown roles {unknown}" if unknown else "not one `--flag VALUE`"))
        flags.append(Flag(named, match[1], match[2], plain(meaning), plain(default)))
    return flags


def contract():
    """The launch contract's flags: the meaning of every flag of its `| flag | meaning | default |`
    table (`--timeout`, `--monitor`) by name, and the security flags."""
    found = tables(CONTRACT.read_text(), CONTRACT)
    rows = next(rows for _, header, rows in found if header[0] == "flag" and rows[0][0].startswith("`--timeout"))
    meanings = {plain(flag).split()[0]: plain(meaning) for flag, meaning, _ in rows}
    security = next(rows for heading, header, rows in found if heading.startswith("Security") and header[:2] == ["role", "flag"])
    return meanings, security


def load_example(name, meanings, security):
    path = EXAMPLES_DIR / name / "PROTOCOL.md"
    text = path.read_text()
    title = plain(text.splitlines()[0].removeprefix("# ").split(": ", 1)[1])
    found = tables(text, path)
    roles = {plain(row[0]): plain(row[header.index("what it does")])
             for _, header, rows in found if header[0] == "role" and "what it does" in header for row in rows}
    flags = [flag for heading, header, rows in found if heading == "Flags" and header == ["role", "flag", "meaning", "default"]
             for flag in flag_rows(rows, roles, path)]
    if not roles or not flags:
        raise TableError(f"{path}: no `| role | what it does |` table, or no flags table under ## Flags")
    if re.search(r"^## Security$", text, re.M):  # the launch contract's security flags, for the roles it names
        flags += [flag for flag in flag_rows([row for row in security if all(plain(role) in roles for role in row[0].split(","))],
                                            roles, CONTRACT)]
    flags = [Flag(f.roles, f.name, f.value, meanings[f.name] if f.meaning == "see the launch contract" else f.meaning, f.default)
             for f in flags]
    return Example(name, title, roles, flags)


def example_names(registry):
    """The examples in the registry's order (the talk's), as the languages implement them."""
    names = []
    for language in registry.names():
        names += [name for name in registry[language].implements if name not in names]
    return names


def load(registry):
    meanings, security = contract()
    return [load_example(name, meanings, security) for name in example_names(registry)]


def wrap(text, indent, first=""):
    return textwrap.wrap(text, WIDTH, initial_indent=first or indent, subsequent_indent=indent,
                         break_on_hyphens=False, break_long_words=False)


def top_section(examples):
    lines = ["usage: btb <example> <role> [--flag value]...", "",
             "Beyond the Box: the talk's examples as ZeroMQ roles, the same program in every language.", "",
             "examples and their roles:"]
    for example in examples:
        lines.append(f"  {example.name}: {example.title}")
        width = max(map(len, example.roles))
        for role, does in example.roles.items():
            lines += wrap(does, " " * (6 + width), f"    {role.ljust(width)}  ")
    lines += ["", *wrap("btb <example> --help describes an example's roles; btb <example> <role> --help lists a "
                        "role's flags. Not every language implements every role: see orchestrator/languages.yaml.", "")]
    return lines + contract_lines()


def contract_lines():
    return ["", *wrap("Events go to stdout as JSON Lines and logs to stderr; exit 0: done, 1: error (see the last "
                      "error event), 2: a bad command line. The launch contract: examples/README.md.", "")]


def example_section(example):
    width = max(map(len, example.roles))
    lines = [f"usage: btb {example.name} <role> [--flag value]...", "",
             *wrap(f"{example.name}: {example.title} (examples/{example.name}/PROTOCOL.md)", ""), "", "roles:"]
    for role, does in example.roles.items():
        lines += wrap(does, " " * (4 + width), f"  {role.ljust(width)}  ")
    return lines + ["", f"btb {example.name} <role> --help lists a role's flags."] + contract_lines()


def role_section(example, role):
    flags = [flag for flag in example.flags if role in flag.roles]
    column = 2 + max(len(f"{flag.name} {flag.value}") for flag in flags) + 2
    lines = [f"usage: btb {example.name} {role} [--flag value]...", "",
             *wrap(f"{example.name} {role}: {example.roles[role]} (examples/{example.name}/PROTOCOL.md)", ""), "",
             "flags (each takes one value: the next argument, even one that begins with -):"]
    for flag in flags:
        lines += wrap(flag.meaning, " " * column, f"  {flag.name} {flag.value}".ljust(column))
        lines.append(" " * column + ("required" if flag.default == "required" else f"default: {flag.default}"))
    lines += [f"  {'--help'.ljust(column - 2)}print this help on stdout and exit 0"]
    if any(flag.value == "EP" for flag in flags):
        lines += ["", *wrap("EP is a ZeroMQ endpoint (tcp://127.0.0.1:5555). A role that binds takes a wildcard "
                            "port (tcp://127.0.0.1:*) and reports the port it got in its ready event.", "")]
    return lines + contract_lines()


def render(examples):
    """The text of examples/help.txt."""
    sections = [("btb", top_section(examples))]
    for example in examples:
        sections.append((f"btb {example.name}", example_section(example)))
        sections += [(f"btb {example.name} {role}", role_section(example, role)) for role in example.roles]
    out = ["# btb --help for every language: generated from the PROTOCOL.md tables by `invoke help`; do not edit.",
           "# A line [btb ...] starts a section; a program prints the lines after it up to the next one."]
    for key, lines in sections:
        for line in lines:
            if HEADER.fullmatch(line) or len(line) > WIDTH:
                raise TableError(f"[{key}]: a line too long or like a header: {line!r}")
        out += [f"[{key}]", *lines]
    return "\n".join(out) + "\n"


def section(text, words):
    """The section for `btb WORDS...`, as every language finds it, or None."""
    header, lines, found = f"[{' '.join(['btb', *words])}]", [], False
    for line in text.splitlines(keepends=True):
        if HEADER.fullmatch(line.rstrip("\n")):
            if found:
                break
            found = line.rstrip("\n") == header
        elif found:
            lines.append(line)
    return "".join(lines) if found else None
