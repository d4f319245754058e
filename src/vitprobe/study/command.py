"""``vitprobe run``: the whole study in one command."""

from __future__ import annotations

import argparse
import sys
import time


def register(subparsers) -> None:
    from vitprobe.analyses import analysis_names
    from vitprobe.schema import CONTROLS
    from vitprobe.study.config import DEFAULT_ANALYSES, DEMO_N_IMAGES, DTYPES

    p = subparsers.add_parser(
        "run", help="run the whole study and write a report",
        description="Run the whole study in one streaming pass over the images, in a seeded "
                    "random order: neuron moments and distributions, mutual information "
                    "against distance with bowties, attention against embedding angles, and "
                    "the query-key weight analysis, on the model and a random-init control; "
                    "then figures and report.html. With no "
                    "arguments: the offline DINOv2-S/14 on the built-in demo photos "
                    f"({DEMO_N_IMAGES} crops), a demo scale that finishes in minutes on a CPU.",
        formatter_class=_DefaultsFormatter)
    from vitprobe.models.command import add_model_arguments

    add_model_arguments(p)
    from vitprobe.study.config import DEFAULT_IMAGES

    p.add_argument("--images", "-i", default=DEFAULT_IMAGES, metavar="SRC",
                   help="image source: a folder (ImageNet-style or flat), a .txt list, .tar "
                        "shards, hf:<name>[:<split>], demo, or stimuli:<kind>")
    p.add_argument("--n-images", "-n", type=int, default=None,
                   help=f"images in the seeded random subset (default: {DEMO_N_IMAGES} for the "
                        "demo, else all)")
    p.add_argument("--seed", type=int, default=0,
                   help="picks the subset and the processing order; seeds controls")
    p.add_argument("--out", "-o", default="vitprobe-out", help="results folder")
    p.add_argument("--analyses", default=",".join(DEFAULT_ANALYSES),
                   help=f"comma-separated, from {','.join(analysis_names())}")
    p.add_argument("--control", choices=[*CONTROLS, "none"], default=CONTROLS[0],
                   help="the same study on a randomly initialised copy, overlaid in every "
                        "figure (none: skip it)")
    p.add_argument("--dtype", choices=DTYPES, default="float32",
                   help="model compute dtype (statistics are accumulated in float32/64)")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward")
    p.add_argument("--workers", type=int, default=None,
                   help="image decoding processes (default: 2 on CPU, one per free core "
                        "on a GPU)")
    p.add_argument("--memory-budget", default="auto",
                   help="memory for mutual-information counts per pass (more passes if "
                        "needed), and for the calibration images an analysis keeps to count "
                        "them in the same pass (above it they are forwarded again); auto: "
                        "4GB on CPU, 30%% of the GPU's memory on CUDA")
    p.add_argument("--calibration-images", type=int, default=256,
                   help="images (a random sample) that fix bin edges and the mean token")
    p.add_argument("--mi-channels", type=int, default=None,
                   help="channels per sublayer for mutual information (evenly spaced; "
                        "default all)")
    p.add_argument("--mi-bins", type=int, default=None,
                   help="quantile bins per neuron (default: from the number of images)")
    p.add_argument("--checkpoint-every", type=float, default=300.0, metavar="SECONDS",
                   help="seconds between checkpoints of the counts (--resume continues)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--force", action="store_true",
                   help="replace the run in --out (only files its manifest says are a run's)")
    p.add_argument("--no-report", action="store_true", help="skip figures and report.html")
    p.add_argument("--pdf", action="store_true", help="PDF figures beside the PNGs")
    p.set_defaults(func=run)


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" unless the help already says what the default is."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if "(default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def run(args: argparse.Namespace) -> int:
    from vitprobe.study.config import StudyConfig
    from vitprobe.study.runner import EXIT_INTERRUPTED, StudyInterrupted, run_study

    config = StudyConfig(
        model=args.model, images=args.images, n_images=args.n_images, seed=args.seed,
        out=args.out, analyses=tuple(a.strip() for a in args.analyses.split(",") if a.strip()),
        control=None if args.control == "none" else args.control, device=args.device,
        dtype=args.dtype, batch_size=args.batch_size, workers=args.workers,
        memory_budget=args.memory_budget, calibration_images=args.calibration_images,
        checkpoint_every_s=args.checkpoint_every, mi_channels=args.mi_channels,
        mi_bins=args.mi_bins, checkpoint=args.checkpoint, pretrained=not args.random_init,
        resume=args.resume, force=args.force, pdf=args.pdf,
    )
    t0 = time.perf_counter()
    try:
        result = run_study(config, report=not args.no_report)
    except StudyInterrupted as stop:
        print(f"vitprobe: {stop}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if result.report is None and not result.datasets:
        return 0  # a non-zero rank of a distributed run: rank 0 prints the summary
    _summary(config, result, time.perf_counter() - t0)
    return 0


def _summary(config, result, seconds: float) -> None:
    lines = [
        "",
        f"vitprobe run finished in {seconds / 60:.1f} min"
        + ("  (demo scale: built-in photos, not ImageNet)" if config.is_demo else ""),
        f"  model      {config.model} ({', '.join(config.variants)})",
        f"  images     {result.n_images} counted from {config.images}"
        + (f", {len(result.skipped)} skipped" if result.skipped else ""),
        f"  analyses   {', '.join(config.analyses)}",
        f"  results    {config.out}/results/ ({len(result.datasets)} netCDF "
        f"file{'' if len(result.datasets) == 1 else 's'})",
    ]
    peak = result.peak_memory
    held = ([f"{peak['host_rss'] / 1e9:.1f} GB resident"] if "host_rss" in peak else []) + (
        [f"{peak['device_reserved'] / 1e9:.1f} GB on {config.device}"]
        if "device_reserved" in peak else [])
    if held:
        lines.append(f"  memory     peak {', '.join(held)}")
    if result.report is not None:
        lines.append(f"  report     {result.report}")
    for path, reason in result.skipped[:10]:
        lines.append(f"  skipped    {path}: {reason}")
    if len(result.skipped) > 10:
        lines.append(f"  ... {len(result.skipped) - 10} more skipped files in manifest.json")
    print("\n".join(lines))
