"""The ``vitprobe`` command line: a thin dispatcher.

Each sub-command lives beside the code it drives, in a ``command.py`` module that
exposes ``register(subparsers)``; this file only collects them. Heavy imports
(torch, models) happen inside each command's handler so that ``vitprobe --help``
stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# sub-command modules, in the order they appear in ``vitprobe --help``
COMMAND_MODULES = (
    "vitprobe.study.command",  # run
    "vitprobe.report.command",  # report
    "vitprobe.report.compare_command",  # compare
    "vitprobe.models.command",  # info, download
    "vitprobe.weights.command",  # qk
    "vitprobe.study.angles_command",  # angles (a preset of run)
    "vitprobe.study.salience_command",  # salience (a preset of run)
)


def build_parser() -> argparse.ArgumentParser:
    from vitprobe import __version__

    parser = argparse.ArgumentParser(
        prog="vitprobe",
        description="Measure what vision transformers compute: neuron statistics and the "
        "similarity structure of attention.",
    )
    parser.add_argument("--version", action="version", version=f"vitprobe {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name == name:  # command not built yet in this checkout
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except VitprobeError as err:
        print(f"vitprobe: error: {err}", file=sys.stderr)
        return 1


from vitprobe.errors import VitprobeError  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
