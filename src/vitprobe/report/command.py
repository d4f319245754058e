"""``vitprobe report DIR``: redraw figures and report.html from saved results."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "report", help="redraw every figure and report.html from a results folder",
        description="Redraw every figure (PNG; PDF too with --pdf) and report.html from "
                    "DIR/results/*.nc and DIR/manifest.json, without the model or the images.")
    p.add_argument("dir", help="a folder written by 'vitprobe run'")
    p.add_argument("--pdf", action="store_true", help="also write every figure as PDF")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="processes drawing figures (default: one per CPU core; 1: serial)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vitprobe.report import build_report

    path = build_report(args.dir, pdf=args.pdf, workers=args.workers)
    print(f"report: {path}")
    return 0
