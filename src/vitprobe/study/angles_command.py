"""``vitprobe angles``: attention against the angle between patch embeddings.

It lives beside the study it presets (not in :mod:`vitprobe.attention`, which the
study's analyses import).

A preset of ``vitprobe run`` (:func:`vitprobe.study.run_study`) with the ``angles`` and
``qk`` analyses: the same seeded processing order, calibration, streaming, checkpoints,
results files and report as the whole study.
"""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    from vitprobe.models.command import add_model_arguments

    p = subparsers.add_parser(
        "angles",
        help="attention against the angle between patch embeddings, per layer and head",
        description="Stream images through a ViT and measure, per layer and head, whether "
        "attention goes to patches whose embeddings make a small angle with the query's "
        "(similar) or one above 90 degrees (dissimilar), for raw and mean-centred "
        "embeddings, trained against a random-init control, with the query-key weight "
        "measures beside them. The 'angles' and 'qk' analyses of 'vitprobe run': writes "
        "DIR/results/angles.nc and qk.nc, DIR/angles_table.txt, figures and report.html.",
    )
    add_model_arguments(p)
    p.add_argument("--images", "-i", default="demo", metavar="SRC",
                   help="image source (default: demo, the built-in photos); see "
                        "'vitprobe run --help' for every form")
    p.add_argument("--n-images", "-n", type=int, default=None, metavar="N",
                   help="images to use, a seeded random subset (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the image subset, the "
                   "processing order and the random-init control (default: 0)")
    p.add_argument("--out", "-o", required=True, metavar="DIR", help="output folder")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=0, help="image loader processes")
    p.add_argument("--embedding", choices=("ln1", "resid_pre"), default="ln1",
                   help="tokens as attention sees them (ln1, default) or the raw residual "
                        "stream entering the block")
    p.add_argument("--include-prefix", action="store_true",
                   help="pair the class/register tokens too (default: patch tokens only)")
    p.add_argument("--bins", type=int, default=90, help="angle bins over 0..180 degrees "
                   "(even; default 90)")
    p.add_argument("--calibration-images", type=int, default=256, metavar="N",
                   help="images (a random sample) whose mean token centres the embeddings")
    p.add_argument("--precision", choices=("float32", "float64"), default="float32")
    p.add_argument("--no-control", action="store_true",
                   help="skip the random-init control")
    p.add_argument("--no-qk", action="store_true",
                   help="do not attach the query-key weight measures")
    p.add_argument("--no-figures", action="store_true", help="write no figures or report")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run")
    p.add_argument("--force", action="store_true", help="replace the run in --out")
    p.set_defaults(func=run_angles)


def run_angles(args: argparse.Namespace) -> int:
    from vitprobe.attention.result import layer_table
    from vitprobe.netcdf import load_dataset
    from vitprobe.runfolder import RESULTS_DIR
    from vitprobe.schema import RANDOM_INIT
    from vitprobe.study import StudyConfig, run_study

    config = StudyConfig(
        model=args.model, pretrained=not args.random_init, checkpoint=args.checkpoint,
        device=args.device, images=args.images, n_images=args.n_images, seed=args.seed,
        out=args.out, analyses=("angles",) if args.no_qk else ("angles", "qk"),
        control=None if args.no_control else RANDOM_INIT, batch_size=args.batch_size,
        workers=args.workers, calibration_images=args.calibration_images,
        resume=args.resume, force=args.force,
        options={"angles_embedding": args.embedding,
                 "angles_include_prefix": args.include_prefix, "angles_bins": args.bins,
                 "angles_precision": args.precision})
    result = run_study(config, report=not args.no_figures, progress=sys.stderr.isatty())
    ds = load_dataset(config.out / RESULTS_DIR / "angles.nc")
    if "qk" in result.datasets:
        from vitprobe.attention import attach_qk

        qk = load_dataset(config.out / RESULTS_DIR / "qk.nc")
        if list(qk["model"].values) == list(ds["model"].values):
            ds = attach_qk(ds, qk)
    table = layer_table(ds)
    (config.out / "angles_table.txt").write_text(table + "\n")
    print(table)
    print(f"wrote {result.datasets['angles']}")
    if result.report is not None:
        print(f"wrote {result.report}")
    return 0
