"""Recording cost of vitprobe against hand-written hooks, nnsight and torchlens (issue 16).

Every attention output, MLP output and attention pattern of a random-init timm ViT-S/16
(12 layers), the same weights and the same batch for all, timed side by side in
alternation (A B C ... A B C ...) with several repeats. Each variant's time is divided by
the plain fused forward (``F.scaled_dot_product_attention``, what the model runs by
default) measured in the same rounds:

* vitprobe: :class:`vitprobe.Recorder` on the fused model; the patterns are recomputed
  in float32 from the q and k the attention consumed;
* hooks: hand-written forward hooks on an eager copy (``fused_attn = False``) on
  ``ls1``, ``ls2`` and ``attn.attn_drop`` (the softmax output);
* nnsight (``NNsight(eager).trace``, ``.output.save()`` of the same modules) and
  torchlens (``trace``, every operation's output saved), when installed; a missing peer is
  skipped with a note.

Target (issue 16): vitprobe's ratio at most the hooks' ratio + 0.03. The patterns of
vitprobe and of the eager hooks are compared (max |difference|) as a sanity check.

    python benchmarks/peer_recording.py [--batch 16] [--repeats 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import vitprobe
from vitprobe.record import Recorder

SITES = ("blocks.*.attn.out", "blocks.*.mlp.out", "blocks.*.attn.pattern")


def hooked(eager: torch.nn.Module) -> tuple[Callable[[torch.Tensor], dict], list]:
    """A forward that records through hand-written hooks; returns (run, handles)."""
    store: dict[str, torch.Tensor] = {}
    handles = []
    for i, blk in enumerate(eager.blocks):
        for name, module in (("attn.out", blk.ls1), ("mlp.out", blk.ls2),
                             ("attn.pattern", blk.attn.attn_drop)):
            def hook(m, a, out, key=f"blocks.{i}.{name}"):
                store[key] = out.detach()
            handles.append(module.register_forward_hook(hook))

    def run(pixels: torch.Tensor) -> dict:
        store.clear()
        eager(pixels)
        return dict(store)

    return run, handles


def nnsight_run(eager: torch.nn.Module) -> Callable[[torch.Tensor], dict] | str:
    if importlib.util.find_spec("nnsight") is None:
        return "nnsight not installed (pip install nnsight)"
    from nnsight import NNsight

    wrapped = NNsight(eager)

    def run(pixels: torch.Tensor) -> dict:
        saved = {}
        with wrapped.trace(pixels):
            for i, blk in enumerate(wrapped.blocks):
                # in execution order: nnsight 0.8 refuses to go back in a forward
                saved[f"blocks.{i}.attn.pattern"] = blk.attn.attn_drop.output.save()
                saved[f"blocks.{i}.attn.out"] = blk.ls1.output.save()
                saved[f"blocks.{i}.mlp.out"] = blk.ls2.output.save()
        return {k: getattr(v, "value", v) for k, v in saved.items()}

    return run


def torchlens_run(eager: torch.nn.Module) -> Callable[[torch.Tensor], object] | str:
    if importlib.util.find_spec("torchlens") is None:
        return "torchlens not installed (pip install torchlens)"
    import torchlens

    trace = getattr(torchlens, "trace", None)  # 2.x; log_forward_pass before

    def run(pixels: torch.Tensor) -> object:
        if trace is not None:
            return trace(eager, pixels)  # every operation's output saved (the default)
        return torchlens.log_forward_pass(eager, pixels, layers_to_save="all", vis_opt="none")

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5, help="alternations per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (a median each)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--model", default="timm:vit_small_patch16_224")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    probed = vitprobe.load_model(args.model, pretrained=False)
    fused = probed.model.eval()
    eager = copy.deepcopy(fused)
    for blk in eager.blocks:
        blk.attn.fused_attn = False
    pixels = torch.randn(args.batch, 3, *probed.preprocess.input_size,
                         generator=torch.Generator().manual_seed(1))
    recorder = Recorder(probed, SITES)
    run_hooks, _ = hooked(eager)

    def with_vitprobe() -> dict:
        with recorder:
            fused(pixels)
            return recorder.pop()

    variants: dict[str, Callable[[], object]] = {
        "plain fused forward": lambda: fused(pixels),
        "vitprobe": with_vitprobe,
        "hand-written hooks (eager)": lambda: run_hooks(pixels),
    }
    notes = []
    for name, make in (("nnsight", nnsight_run), ("torchlens", torchlens_run)):
        try:
            run = make(eager)
        except Exception as exc:  # a peer that cannot run here is reported, not fatal
            run = f"{name} failed to set up: {type(exc).__name__}: {exc}"
        if isinstance(run, str):
            notes.append(run)
            continue
        try:
            with torch.inference_mode():
                run(pixels)
        except Exception as exc:
            notes.append(f"{name} failed: {type(exc).__name__}: {str(exc)[:200]}")
            continue
        variants[name] = (lambda r=run: r(pixels))

    with torch.inference_mode():
        mine, theirs = with_vitprobe(), run_hooks(pixels)
        diff = max(float((mine[k] - theirs[k]).abs().max()) for k in mine)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.model} "
          f"(random init), batch {args.batch}; recorded: {', '.join(SITES)} "
          f"({len(mine)} tensors); vitprobe vs hooks max |diff| {diff:.2e}")
    for note in notes:
        print(f"  skipped: {note}")
    ratios: dict[str, list[float]] = {k: [] for k in variants if k != "plain fused forward"}
    plain_s = []
    with torch.inference_mode():
        for fn in variants.values():  # warm-up
            fn()
        for _ in range(args.rounds):
            times: dict[str, list[float]] = {k: [] for k in variants}
            for _ in range(args.repeats):
                for name, fn in variants.items():
                    start = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - start)
            base = statistics.median(times["plain fused forward"])
            plain_s.append(base)
            for name in ratios:
                ratios[name].append(statistics.median(times[name]) / base)
    print(f"plain fused forward: {statistics.median(plain_s):.3f} s per batch (median of "
          f"{args.rounds} rounds x {args.repeats} repeats)")
    print("time over the plain fused forward, per round (median of the repeats):")
    for name, r in ratios.items():
        print(f"  {name:28s} " + "  ".join(f"{x:.3f}" for x in r)
              + f"   mean {statistics.mean(r):.3f}")
    gap = [v - h for v, h in zip(ratios["vitprobe"], ratios["hand-written hooks (eager)"],
                                 strict=True)]
    print(f"vitprobe - hooks per round: {', '.join(f'{g:+.3f}' for g in gap)} "
          f"(target <= +0.03; mean {statistics.mean(gap):+.3f})")


if __name__ == "__main__":
    main()
