"""``vitprobe salience``: the salience battery alone (pop-out, centre-surround, eigen-stimuli).

Runs the registered ``salience`` analysis through :func:`vitprobe.run_study`, which
writes ``OUT/results/salience.nc``, the figures and ``OUT/report.html``. Options
beyond the CLI's go through ``vitprobe.salience.measure_salience(model, **options)``.
"""

from __future__ import annotations

import argparse

from vitprobe.errors import VitprobeError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "salience",
        help="does attention single out what stands out? pop-out arrays, centre-surround, "
        "eigen-stimuli",
        description="Generated search arrays (orientation, colour, contrast, size singletons "
        "swept from no difference to maximal, conjunctions, distractor jitter, grid-aligned "
        "and straddling), centre-surround stimuli, and patches aligned to each head's "
        "query-key modes; per layer and head, with a random-init control.",
    )
    from vitprobe.models.command import add_model_arguments

    add_model_arguments(p)
    p.add_argument("--out", "-o", required=True, metavar="DIR", help="output folder")
    p.add_argument("--no-control", action="store_true",
                   help="skip the random-init control")
    p.add_argument("--seeds", type=int, default=None, metavar="N",
                   help="stimulus seeds (positions and base values; default 3)")
    p.add_argument("--eigen-layers", default=None, metavar="L,L",
                   help="layers (1-based) whose heads get eigen-stimuli (default: 1; "
                   "'none' skips them)")
    p.add_argument("--force", action="store_true", help="overwrite a finished run")
    p.set_defaults(func=run_salience)


def _eigen_layers(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    if text.strip().lower() == "none":
        return ()
    try:
        return tuple(int(v) - 1 for v in text.split(","))
    except ValueError as err:
        raise VitprobeError(f"--eigen-layers takes 1-based layer numbers like 1,6; got "
                            f"{text!r}") from err


def run_salience(args: argparse.Namespace) -> int:
    from vitprobe.study import run_study

    options = {k: v for k, v in {"salience_seeds": args.seeds,
                                  "salience_eigen_layers": _eigen_layers(args.eigen_layers)
                                  }.items() if v is not None}
    # analysis options travel as Context.options (only passed when given)
    extra = {"options": options} if options else {}
    if args.force:
        extra["force"] = True
    result = run_study(
        model=args.model,
        checkpoint=args.checkpoint,
        pretrained=not args.random_init,
        device=args.device,
        analyses=("salience",),
        control=None if args.no_control else "random-init",
        out=args.out,
        **extra,
    )
    print(f"wrote {result.out}")
    return 0
