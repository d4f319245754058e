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
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

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


def _plain_warnings(show_other: Callable[..., None]) -> Callable[..., None]:
    """A ``warnings.showwarning`` that prints our own warnings as one plain line (the user
    reads what went wrong, not the source line that said it) and hands others to
    ``show_other``."""
    package = Path(__file__).parent

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: TextIO | None = None, line: str | None = None) -> None:
        if package in Path(filename).parents:
            print(f"vitprobe: warning: {message}", file=file or sys.stderr, flush=True)
        else:
            show_other(message, category, filename, lineno, file, line)

    return show


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    shown = warnings.showwarning
    warnings.showwarning = _plain_warnings(shown)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except VitprobeError as err:
        print(f"vitprobe: error: {err}", file=sys.stderr)
        return 1
    finally:
        warnings.showwarning = shown


from vitprobe.errors import VitprobeError  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
