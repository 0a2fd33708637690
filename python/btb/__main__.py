"""btb <example> <role> [--flag value]...: one entry point for every role (examples/README.md)."""
import argparse
import sys

from . import chat, perf, ticker, valuation
from .contract import Failure, Usage, emit

EXAMPLES = {"chat": chat, "ticker": ticker, "valuation": valuation, "perf": perf}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="btb", description="Beyond the Box roles")
    examples = parser.add_subparsers(dest="example", required=True, metavar="example")
    for name, module in EXAMPLES.items():
        roles = examples.add_parser(name).add_subparsers(dest="role", required=True, metavar="role")
        module.add_roles(roles)
    args = parser.parse_args(argv)  # exits 2 on a bad command line, as the contract says
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
