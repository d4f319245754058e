"""``vitprobe compare RUN RUN ... --out DIR``: finished runs side by side."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "compare", help="compare finished runs side by side in one report",
        description="Read finished run folders (manifest.json, results/*.nc; no model, no "
                    "images), check that they can be compared (same analyses, same image "
                    "set; different depths are drawn against relative depth), and write "
                    "DIR/comparison.html with one line or panel per model, the per-layer "
                    "numbers as a table and CSV, and the interactive explorer.")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="folders written by 'vitprobe run'")
    p.add_argument("--out", "-o", required=True, help="folder for the comparison report")
    p.add_argument("--labels", default=None,
                   help="comma-separated display labels, one per run (default: folder names)")
    p.add_argument("--analyses", default=None,
                   help="comma-separated analyses to compare (default: all of the first run)")
    p.add_argument("--controls", action="store_true",
                   help="also draw each run's controls (random init), dashed")
    p.add_argument("--allow-different-images", action="store_true",
                   help="compare runs measured on different image sets (refused otherwise)")
    p.add_argument("--pdf", action="store_true", help="PDF figures beside the PNGs")
    p.add_argument("--no-explorer", action="store_true",
                   help="leave the interactive explorer out of the page")
    p.set_defaults(func=run)


def _split(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def run(args: argparse.Namespace) -> int:
    from vitprobe.report.compare import compare

    path = compare(args.runs, args.out, labels=_split(args.labels),
                   analyses=_split(args.analyses), controls=args.controls,
                   allow_different_images=args.allow_different_images, pdf=args.pdf,
                   explorer=not args.no_explorer)
    print(f"comparison: {path}")
    return 0
