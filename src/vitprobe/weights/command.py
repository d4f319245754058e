"""``vitprobe qk``: query-key weight analysis of every head (poster's "Similarity or
dissimilarity?"; Pan et al. 2024, arXiv 2405.14880; Saponati et al. 2025, arXiv 2502.10927).

Writes ``OUT/qk.nc`` (xarray Dataset, netCDF via h5netcdf) and, unless ``--no-figures``,
``OUT/qk_spectra.png``, ``OUT/qk_summary.png`` and ``OUT/qk_sym_asym.png``; prints a
per-layer summary table. Figures re-render from the file with :mod:`vitprobe.plots.qk`.
"""

from __future__ import annotations

import argparse

from vitprobe.errors import VitprobeError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "qk",
        help="query-key weight analysis: symmetric/antisymmetric spectra of W_Q W_K^T",
        description="Per head, M = W_Q W_K^T = M_sym + M_asym: eigenvalues of M_sym, the "
        "lambda of M_asym's +-i*lambda pairs, singular values and modes of M, positive share, "
        "symmetry score 2s-1, weighted cosine, ranks. Exact, from the d_model x d_head "
        "factors. Vision specs as in 'vitprobe info'; hf-text:<repo-or-dir> for Hugging Face "
        "text transformers (BERT, GPT-2, Llama/Qwen2 with grouped-query attention).",
    )
    p.add_argument(
        "--model",
        "-m",
        default=None,
        metavar="SPEC",
        help="timm:<name>, hf:<repo-or-dir>, torchvision:<name>, a checkpoint "
        "dir, imgfocus-dinov2-s14 (default), or hf-text:<repo-or-dir>",
    )
    p.add_argument("--checkpoint", metavar="FILE", help="local weights for a vision --model")
    p.add_argument(
        "--random-init",
        action="store_true",
        help="analyse the architecture with random weights instead of trained ones",
    )
    p.add_argument(
        "--random-init-baseline",
        action="store_true",
        help="also analyse a random-init copy of the same architecture, stored "
        "along the 'model' dimension",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of random init (default: 0)")
    p.add_argument(
        "--fold-ln", action="store_true", help="fold the pre-attention LayerNorm weight into M"
    )
    p.add_argument("--scale", action="store_true", help="include 1/sqrt(d_head) in M")
    p.add_argument(
        "--top-k",
        type=int,
        default=8,
        metavar="K",
        help="modes whose vectors are kept per head (default: 8)",
    )
    p.add_argument("--out", "-o", required=True, metavar="DIR", help="output folder")
    p.add_argument("--no-figures", action="store_true", help="write only qk.nc")
    p.set_defaults(func=run_qk)


def _load(spec: str, *, pretrained: bool, seed: int, checkpoint: str | None):
    from vitprobe.weights.text import TEXT_PREFIX, load_text_factors

    if spec.startswith(TEXT_PREFIX):
        if checkpoint:
            raise VitprobeError("--checkpoint is not supported with hf-text: models")
        return load_text_factors(spec, pretrained=pretrained, seed=seed)
    from vitprobe.models import load_model

    return load_model(
        spec, pretrained=pretrained, seed=seed, checkpoint=checkpoint if pretrained else None
    )


def run_qk(args: argparse.Namespace) -> int:
    from vitprobe.models.registry import DEFAULT_MODEL
    from vitprobe.runfolder import check_writable
    from vitprobe.schema import RANDOM_INIT, TRAINED
    from vitprobe.weights.analysis import analyze_qk
    from vitprobe.weights.io import save_qk, summary_table

    if args.top_k < 1:
        raise VitprobeError("--top-k must be at least 1")
    if args.random_init and args.random_init_baseline:
        raise VitprobeError(
            "--random-init-baseline compares trained weights with random init; drop --random-init"
        )
    out = check_writable(args.out)  # before the model is loaded: a bad --out fails at once
    spec = args.model or DEFAULT_MODEL
    model = _load(spec, pretrained=not args.random_init, seed=args.seed, checkpoint=args.checkpoint)
    baseline = None
    if args.random_init_baseline:
        baseline = _load(spec, pretrained=False, seed=args.seed, checkpoint=None)
    ds = analyze_qk(
        model,
        baseline=baseline,
        fold_ln=args.fold_ln,
        scale=args.scale,
        top_k=args.top_k,
        label=RANDOM_INIT if args.random_init else TRAINED,
    )
    path = save_qk(ds, out / "qk.nc")
    print(summary_table(ds))
    print(f"wrote {path}")
    if not args.no_figures:
        from vitprobe.plots.common import save_figure
        from vitprobe.plots.qk import plot_qk_spectra, plot_qk_summary, plot_sym_asym_intuition

        for name, fig in (
            ("qk_spectra.png", plot_qk_spectra(ds)),
            ("qk_summary.png", plot_qk_summary(ds)),
            ("qk_sym_asym.png", plot_sym_asym_intuition()),
        ):
            save_figure(fig, out / name, dpi=110)
            print(f"wrote {out / name}")
    return 0
