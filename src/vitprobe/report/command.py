"""``vitprobe report DIR``: redraw figures and report.html from saved results."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "report", help="redraw every figure and report.html from a results folder",
        description="Redraw every figure (PNG and PDF) and report.html from DIR/results/*.nc "
                    "and DIR/manifest.json, without the model or the images.")
    p.add_argument("dir", help="a folder written by 'vitprobe run'")
    p.add_argument("--no-pdf", action="store_true", help="PNG figures only")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vitprobe.report import build_report

    path = build_report(args.dir, pdf=not args.no_pdf)
    print(f"report: {path}")
    return 0
