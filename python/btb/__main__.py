"""btb <example> <role> [--flag value]...: one entry point for every role (examples/README.md)."""
import argparse
import re
import sys
from importlib import resources

from . import chat, desk, monitor, perf, query, ticker, valuation
from .contract import Failure, Usage, emit

EXAMPLES = {"chat": chat, "ticker": ticker, "valuation": valuation, "query": query, "desk": desk, "perf": perf}
UNMONITORED = {"perf", "encode", "derive"}  # perf's loops are measured; the vector printers open no socket
# examples/help.txt, generated from the PROTOCOL.md flags tables by `invoke help`: the same help,
# byte for byte, in every language (examples/README.md, "Help: one text, six programs").
HELP = resources.files(__package__).joinpath("help.txt").read_bytes()
HEADER = re.compile(rb"\[btb( [a-z-]+){0,2}\]")


class Parser(argparse.ArgumentParser):
    """argparse without its own --help: the help is help.txt's, and "--help" after a flag is a value."""

    def __init__(self, **kwargs):
        super().__init__(add_help=False, **kwargs)


def attach_values(argv):
    """`--flag value` as `--flag=value`: every flag of the contract takes a value, and one may begin
    with "-" (a Z85 key can), which argparse would otherwise take for an option."""
    out = []
    for arg in argv:
        if out and out[-1].startswith("--") and len(out[-1]) > 2 and "=" not in out[-1]:
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out  # a flag with no value left stays as it is: argparse says it needs one


def help_section(argv, roles):
    """The help section asked for by `btb [EXAMPLE [ROLE]] ... --help`, or None: the words before the
    first flag name the section, and --help (or -h) counts only where a flag may stand."""
    words = argv[: next((i for i, arg in enumerate(argv) if arg.startswith("-")), len(argv))]
    asked = any(arg in ("--help", "-h") for arg in argv[len(words)::2])
    if not asked or len(words) > 2 or (len(words) == 2 and tuple(words) not in roles):
        return None
    header, section = b"[" + b" ".join([b"btb", *map(str.encode, words)]) + b"]", None
    for line in HELP.splitlines(keepends=True):
        if HEADER.fullmatch(line.rstrip(b"\n")):
            if section is not None:
                break
            section = b"" if line.rstrip(b"\n") == header else None
        elif section is not None:
            section += line
    return section


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = Parser(prog="btb")
    examples = parser.add_subparsers(dest="example", required=True, metavar="example")
    roles = set()  # (example, role): what this program implements
    for name, module in EXAMPLES.items():
        parsers = examples.add_parser(name).add_subparsers(dest="role", required=True, metavar="role")
        module.add_roles(parsers)
        roles.update((name, role) for role in parsers.choices)
        for role, role_parser in parsers.choices.items():
            if not {name, role} & UNMONITORED:
                monitor.add_flag(role_parser)  # --monitor on|off: the launch contract's, like --timeout
    section = help_section(argv, roles)
    if section is not None:
        sys.stdout.buffer.write(section)  # bytes, as in the file: the same in any locale
        return 0
    args = parser.parse_args(attach_values(argv))  # exit 2 if bad
    try:
        args.run(args)
    except Usage as usage:
        parser.error(str(usage))  # exits 2
    except Failure as failure:
        emit("error", code=failure.code, reason=failure.reason)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
