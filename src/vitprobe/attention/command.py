"""``vitprobe angles``: attention against the angle between patch embeddings."""

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
        "measures beside them. Writes DIR/angles.nc, DIR/angles_table.txt and PNG figures.",
    )
    add_model_arguments(p)
    p.add_argument("--images", default="demo", metavar="SRC",
                   help="image source (default: demo, the built-in photos); see "
                        "'vitprobe run --help' for every form")
    p.add_argument("--n-images", type=int, default=None, metavar="N",
                   help="images to use, a deterministic subset (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the image subset and of "
                   "the random-init control (default: 0)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=0, help="image loader processes")
    p.add_argument("--embedding", choices=("ln1", "resid_pre"), default="ln1",
                   help="tokens as attention sees them (ln1, default) or the raw residual "
                        "stream entering the block")
    p.add_argument("--include-prefix", action="store_true",
                   help="pair the class/register tokens too (default: patch tokens only)")
    p.add_argument("--bins", type=int, default=90, help="angle bins over 0..180 degrees "
                   "(even; default 90)")
    p.add_argument("--calibration-images", type=int, default=None, metavar="N",
                   help="images for the mean token of the centred variant (default: all)")
    p.add_argument("--precision", choices=("float32", "float64"), default="float32")
    p.add_argument("--no-control", action="store_true",
                   help="skip the random-init control")
    p.add_argument("--no-qk", action="store_true",
                   help="do not attach the query-key weight measures")
    p.add_argument("--no-figures", action="store_true", help="write no PNG figures")
    p.set_defaults(func=run_angles)


def run_angles(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vitprobe.attention.measure import compare_angles
    from vitprobe.attention.result import layer_table, save_angles
    from vitprobe.models.registry import load_model

    model = load_model(args.model, pretrained=not args.random_init, device=args.device,
                       checkpoint=args.checkpoint, seed=args.seed)
    control = None
    if not args.no_control and model.pretrained:
        control = load_model(args.model, pretrained=False, device=args.device,
                             seed=args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ds = compare_angles(
        model, args.images, control=control, qk=not args.no_qk,
        log=lambda msg: print(msg, file=sys.stderr),
        n_images=args.n_images, seed=args.seed, batch_size=args.batch_size,
        workers=args.workers, calibration_images=args.calibration_images,
        embedding=args.embedding, include_prefix=args.include_prefix, bins=args.bins,
        precision=args.precision, progress=sys.stderr.isatty(),
    )
    path = save_angles(ds, out / "angles.nc")
    table = layer_table(ds)
    (out / "angles_table.txt").write_text(table + "\n")
    print(table)
    print(f"wrote {path}")
    if not args.no_figures:
        from vitprobe.plots.angles import save_angle_figures

        for fig in save_angle_figures(ds, out):
            print(f"wrote {fig}")
    return 0
