"""btb <example> <role> [--flag value]...: one entry point for every role (examples/README.md)."""
import argparse
import sys

from . import chat, desk, perf, query, ticker, valuation
from .contract import Failure, Usage, emit

EXAMPLES = {"chat": chat, "ticker": ticker, "valuation": valuation, "query": query, "desk": desk, "perf": perf}


def attach_values(argv):
    """`--flag value` as `--flag=value`: every flag of the contract takes a value, and one may begin
    with "-" (a Z85 key can), which argparse would otherwise take for an option."""
    out, args = [], iter(argv)
    for arg in args:
        if arg.startswith("--") and len(arg) > 2 and "=" not in arg and arg != "--help":
            arg = f"{arg}={next(args, '')}"
        out.append(arg)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(prog="btb", description="Beyond the Box roles")
    examples = parser.add_subparsers(dest="example", required=True, metavar="example")
    for name, module in EXAMPLES.items():
        roles = examples.add_parser(name).add_subparsers(dest="role", required=True, metavar="role")
        module.add_roles(roles)
    args = parser.parse_args(attach_values(sys.argv[1:] if argv is None else argv))  # exit 2 if bad
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
