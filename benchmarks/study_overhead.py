"""The default study's cost: its counting pass per image over the plain forward, and the
fixed costs (everything but the counting pass) as a share of the default run (issue 16).

1. Counting pass: the accumulators of the default study (``StudyConfig()``: moments,
   histograms, MI counts, bowtie counts, angles) built by the analysis plug-ins
   (``vitprobe.analyses``) and driven as the runner drives a batch (recorder, forward
   under ``inference_mode``, non-finite check of
   every recorded site, image indices, ``update`` of every accumulator), against the
   plain forward of the same model on the same batch of demo images, in alternation
   (A B A B ...), several rounds, with the heap retained as ``run_study`` does
   (:func:`vitprobe.resources.retained_heap`) and, side by side, with glibc's defaults
   (with page faults per batch), and each part of the counting batches over the plain
   forward (forward + recording, the non-finite check, every accumulator's ``update``).
   Decoding is timed apart (the loader's workers do it beside the forward). Target <= 1.2.
   Beside them, the *floor* of the counting pass: the forward with recording plus only
   the arithmetic no exact implementation of these statistics can skip, each at the
   speed of one library call (half of each layer's symmetric Gram product of the tokens
   and the logits q k^T, both by BLAS; one exponential per logit; one read of the sites
   of all neuron analyses together): what the pass would cost if every kernel ran at the
   machine's speed and the neuron analyses were one fused pass.
2. Fixed costs: one default run, ``vitprobe.run_study()`` with the report, timed from
   outside and from ``manifest.json`` ``timings_s`` (``load_s``, ``calibration_s``,
   ``end_calibration_s``, ``pass1_s``, ``results_s`` and per analysis, ``report_s``,
   ``total_s``): the counting is ``calibration_s - end_calibration_s + pass1_s`` (the
   calibration images are counted as they are forwarded), the fixed costs are the rest;
   share = fixed / wall, also for the run without the model-only analyses (the salience
   battery's own forwards and eigen search, the query-key weights), whose wall is shorter
   by as much. Target <= 25 %. Also the run's counting per image and model (calibration
   images and loading included) over the plain forward, timed after the run.

    python benchmarks/study_overhead.py [--batch 32] [--repeats 3] [--rounds 3]
        [--skip-run | --only-run] [--n-images 512]
    python benchmarks/study_overhead.py --skip-run --model timm:vit_base_patch16_224 \
        --random-init      # the same analyses' counting pass on another model
    python benchmarks/study_overhead.py --skip-run --model timm:vit_base_patch16_224 \
        --random-init --device cuda --dtype bfloat16 --batch 128   # by part, on a GPU
    python benchmarks/study_overhead.py --skip-run --device-path --batch 8 --rounds 1 \
        --repeats 1   # the accelerator path on the CPU: its torch calls and host waits
    python benchmarks/study_overhead.py --skip-run --device-path --rounds 0 \
        --model timm:vit_base_patch16_224 --tiny-tensors   # the host's time per batch

On a GPU every part is timed after a ``torch.cuda.synchronize()``, so the parts show
where the device's time goes (the runner itself does not synchronise between them).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

import vitprobe
from vitprobe.record import Recorder, all_finite, nonfinite_rows
from vitprobe.resources import retained_heap
from vitprobe.stats.joint import IMAGE_INDEX
from vitprobe.study.config import StudyConfig
from vitprobe.study.stream import autocast


def counting_pass(args) -> None:
    from vitprobe.analyses import Context, first_pass_accumulators

    cfg = StudyConfig(batch_size=args.batch, device=args.device, dtype=args.dtype,
                      **({"model": args.model} if args.model else {}))
    if args.tiny_tensors:
        model = tiny_tensors(cfg.model).to(args.device)
    else:
        model = vitprobe.load_model(cfg.model, pretrained=not args.random_init,
                                    device=args.device)
    cuda = args.device.startswith("cuda")

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    # the default study's pass-1 accumulators, built as the study builds them
    context = Context(n_images=cfg.n_images, calibration_images=cfg.calibration_images,
                      batch_size=cfg.batch_size, seed=cfg.seed,
                      memory_budget=cfg.memory_budget, options=cfg.analysis_options())
    accs = first_pass_accumulators(model, context, cfg.analyses)
    for acc in accs.values():
        acc.device_path_on_cpu = args.device_path
    sites = sorted({s for acc in accs.values() for s in acc.sites})
    t0 = time.perf_counter()
    batches = demo_batches(model, cfg, 2)  # one to calibrate, one to time
    decode_s = (time.perf_counter() - t0) / sum(len(b["ids"]) for b in batches)
    recorder = Recorder(model, sites)
    #: seconds of each part of the counting batches, when ``parts`` is given
    part_s: dict[str, list[float]] = {}

    def run_batch(pixels: torch.Tensor, consume, parts: bool = False) -> None:
        sync()
        clock = [time.perf_counter()]

        def lap(name: str) -> None:
            sync()
            clock.append(time.perf_counter())
            if parts:
                part_s.setdefault(name, []).append(clock[-1] - clock[-2])

        with recorder:
            with torch.inference_mode(), autocast(args.device, args.dtype):
                model.adapter.forward(pixels)
            cache = recorder.pop()
            lap("forward + recording")
            # the runner's check: every recorded site at once, per site only if that fails
            floats = [t for t in cache.values() if t.is_floating_point()]
            if not all_finite(floats):
                for t in floats:
                    nonfinite_rows(t)
            cache[IMAGE_INDEX] = torch.arange(pixels.shape[0])
            lap("non-finite check")
            for name, acc in accs.items():
                consume(acc, cache)
                lap(name)

    t0 = time.perf_counter()
    run_batch(batches[0]["pixels"].to(args.device),
              lambda acc, c: acc.calibrate(c) if acc.needs_calibration else acc.update(c))
    for acc in accs.values():
        if acc.needs_calibration:
            acc.end_calibration()
    calib_s = time.perf_counter() - t0
    pixels = batches[1]["pixels"].to(args.device)

    def plain() -> None:
        with torch.inference_mode(), autocast(args.device, args.dtype):
            model.adapter.forward(pixels)
        sync()

    def counting(parts: bool = False) -> None:
        run_batch(pixels, lambda acc, c: acc.update(c), parts=parts)

    #: seconds of the floor's two parts, when ``parts`` is given
    floor_s: dict[str, list[float]] = {}

    def floor(parts: bool = False) -> None:
        sync()
        start = time.perf_counter()
        with recorder:
            with torch.inference_mode(), autocast(args.device, args.dtype):
                model.adapter.forward(pixels)
            cache = recorder.pop()
        sync()
        recorded = time.perf_counter()
        unavoidable_work(cache, accs)
        sync()
        if parts:
            floor_s.setdefault("forward + recording", []).append(recorded - start)
            floor_s.setdefault("unavoidable arithmetic", []).append(
                time.perf_counter() - recorded)

    one_pass = ", ".join(k for k, a in accs.items() if getattr(a, "counts_calibration", False))
    where = (torch.cuda.get_device_name(torch.device(args.device)) if cuda
             else f"{torch.get_num_threads()} threads")
    print(f"torch {torch.__version__}, {where}, {args.dtype}, {cfg.model}, "
          f"batch {args.batch} of demo images; accumulators: "
          + ", ".join(f"{k} ({type(a).__name__})" for k, a in accs.items())
          + f"; {len(sites)} sites; one-pass calibration: {one_pass or 'none'}")
    if args.rounds == 0:  # the accelerator path's host work only (--device-path)
        if args.device_path or cuda:
            host_work(model, recorder, accs, pixels, args)
        return
    plain(), counting()  # warm-up (numba's first calls)
    # each round times plain and counting with the heap retained (as run_study runs)
    # and, side by side, without it (glibc's defaults: the recorded sites' pages are
    # handed back to the kernel after every batch and faulted in again)
    ratios: dict[bool, list[float]] = {True: [], False: []}
    faults: dict[bool, list[int]] = {True: [], False: []}
    floor_ratios: list[float] = []
    plain_s = []
    for _ in range(args.rounds):
        for retained in (True, False):
            times: dict[str, list[float]] = {"plain": [], "counting": [], "floor": []}
            runs = [("plain", plain), ("counting", counting)] + (
                [("floor", floor)] if retained else [])
            with retained_heap(retained):
                for _ in range(args.repeats):
                    for name, fn in runs:
                        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                        start = time.perf_counter()
                        # the parts as run_study runs them: with the heap retained (the
                        # runs without it page-fault in the forward and would inflate it)
                        fn(parts=True) if name != "plain" and retained else fn()
                        times[name].append(time.perf_counter() - start)
                        if name == "counting":
                            faults[retained].append(
                                resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
            p, c = statistics.median(times["plain"]), statistics.median(times["counting"])
            ratios[retained].append(c / p)
            if retained:
                plain_s.append(p)
                floor_ratios.append(statistics.median(times["floor"]) / p)
    per = 1e3 / args.batch
    print(f"plain forward          {statistics.median(plain_s) * per:7.1f} ms per image")
    for retained, label in ((True, "counting pass / plain"), (False, "  without retained heap")):
        r = ratios[retained]
        print(f"{label:22s} {'  '.join(f'{x:.3f}' for x in r)}  (rounds; median "
              f"{statistics.median(r):.3f}{'; target <= 1.2' if retained else ''}); page "
              f"faults per batch {statistics.median(faults[retained]):,.0f}")
    # where the counting goes: each part's median (heap retained) over the plain
    # forward's; the parts add up to about the ratio above
    p = statistics.median(plain_s)
    print("counting pass by part, over the plain forward: " + ", ".join(
        f"{name} {statistics.median(v) / p:.3f}" for name, v in part_s.items()))
    print(f"floor of the counting pass     {'  '.join(f'{x:.3f}' for x in floor_ratios)}  "
          f"(rounds; median {statistics.median(floor_ratios):.3f}): forward + recording "
          f"{statistics.median(floor_s['forward + recording']) / p:.3f}, unavoidable "
          f"arithmetic {statistics.median(floor_s['unavoidable arithmetic']) / p:.3f}")
    print(f"decoding (one process) {decode_s * 1e3:7.1f} ms per image (the loader's workers, "
          "beside the forward)")
    print(f"first batch incl. calibration {calib_s:.1f} s")
    if args.device_path or cuda:
        host_work(model, recorder, accs, pixels, args)


def unavoidable_work(cache: dict, accs: dict) -> None:
    """The arithmetic of the default study's statistics that no exact implementation can
    skip, each op at library speed, image by image on torch's threads split as the
    compiled angle path splits them (one image per thread, so that its products stay in
    cache):

    * angle statistics, per followed layer: the cosines of all token pairs need the
      Gram product of the normalised tokens, which is symmetric, so half of it (``T/2``
      rows by ``T``; the centred variant follows by a rank-two correction); the
      attention needs the logits ``q k^T`` of every head and one exponential each;
    * the neuron analyses (moments, histograms, MI and bowtie counts) and the non-finite
      check: one read of each site they follow, as if all of them were one fused pass
      at memory speed.
    """
    from vitprobe.attention import AngleAccumulator
    from vitprobe.record import run_parallel, site_name, torch_threads

    neuron_sites: set[str] = set()
    angles = [a for a in accs.values() if isinstance(a, AngleAccumulator)]
    for acc in accs.values():
        if not isinstance(acc, AngleAccumulator):
            neuron_sites.update(acc.sites)
    for site in sorted(neuron_sites):
        cache[site].sum()
    n_threads = torch.get_num_threads()

    def images(t: int) -> None:
        for acc in angles:
            n = cache[site_name(acc.layers[0], acc.embedding)].shape[0]
            for b in range(n * t // n_threads, n * (t + 1) // n_threads):
                for layer in acc.layers:
                    e = cache[site_name(layer, acc.embedding)][b].float()
                    u = e * e.square().sum(-1, keepdim=True).rsqrt()
                    u[: u.shape[0] // 2] @ u.T  # the products are timed, not kept
                    q = cache[site_name(layer, "attn.q")][b] * acc.attn_scale
                    k = cache[site_name(layer, "attn.k")][b].contiguous()
                    logits = torch.matmul(q, k.transpose(-1, -2))
                    torch.exp(logits, out=logits)

    with torch_threads(1):
        run_parallel(images, n_threads, n_threads)


def tiny_tensors(spec: str):
    """A random-init timm ViT of ``spec``'s structure (layers, heads) with tiny tensors:
    width 4 per head, 64-pixel input (16 patches). Its accelerator path costs the host
    what the full model's does (the calls), without the arithmetic."""
    import timm

    from vitprobe.models import wrap

    name = spec.removeprefix("timm:")
    heads = timm.create_model(name, pretrained=False).blocks[0].attn.num_heads
    torch.manual_seed(0)
    net = timm.create_model(name, pretrained=False, img_size=64, embed_dim=4 * heads)
    return wrap(net.eval(), spec=f"{spec} (tiny tensors)")


def host_work(model, recorder, accs, pixels, args) -> None:
    """Per accumulator, the torch calls (each a kernel launch or a view, paid by the host
    on an accelerator) and the host waits of one counting batch on the accelerator path
    (:class:`vitprobe.record.HostWaits`), and the time of its ``update`` outside the
    watch (median of 5; with ``--tiny-tensors`` about the host's time alone)."""
    from vitprobe.record import HostWaits

    with recorder:
        with torch.inference_mode(), autocast(args.device, args.dtype):
            model.adapter.forward(pixels)
        cache = recorder.pop()
    cache[IMAGE_INDEX] = index = torch.arange(pixels.shape[0])  # host, as the runner's
    print(f"accelerator path, one batch of {pixels.shape[0]}: torch calls and host waits")
    total = 0.0
    for name, acc in accs.items():
        with HostWaits(host=[index]) as waits:
            acc.update(cache)
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            acc.update(cache)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        total += statistics.median(times)
        print(f"  {name:22s} {sum(waits.counts.values()):6,d} calls, "
              f"{len(waits.calls)} waits, {statistics.median(times) * 1e3:7.1f} ms"
              f"{': ' + '; '.join(waits.calls[:3]) if waits.calls else ''}")
    print(f"  {'all':22s} {total * 1e3:27.1f} ms per batch")


def default_run(args) -> None:
    with tempfile.TemporaryDirectory(prefix="vitprobe-overhead-") as tmp:
        out = Path(tmp) / "run"
        t0 = time.perf_counter()
        vitprobe.run_study(out=out, n_images=args.n_images, progress=False)
        wall = time.perf_counter() - t0
        # this process ran the study (and nothing bigger before it): its peak is the run's
        peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
        manifest = json.loads((out / "manifest.json").read_text())
        timings = manifest.get("timings_s", {})
    plain_s = plain_forward_per_image(args)
    # one-pass calibration: the calibration chunks are forwarded and counted while the
    # edges are learned, so the counting is calibration_s + pass_s less the
    # end_calibration work (edges, rankings) that counts nothing new
    pass_s = sum(v for k, v in timings.items() if k.startswith("pass") and "/" not in k)
    end_cal = timings.get("end_calibration_s", 0.0)
    counting = timings.get("calibration_s", 0.0) - end_cal + pass_s
    report = timings.get("report_s", wall - timings.get("total_s", wall))
    print(f"\ndefault run ({args.n_images or 'default'} images): wall {wall:.1f} s, peak "
          f"resident memory {peak_gb:.2f} GB; "
          "manifest timings_s: " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items())
          + ("" if "report_s" in timings else f"; report (wall - total_s) {report:.1f}"))
    fixed = wall - counting
    print(f"forwarding and counting the images (calibration_s - end_calibration_s + "
          f"pass1_s): {counting:.1f} s; fixed costs (the rest) {fixed:.1f} s = "
          f"{fixed / wall:.1%} of the run (target <= 25 %)")
    # the run as a user sees it: every model forwards every image once (the calibration
    # images included), decoding in the loader's workers beside it
    forwards = manifest["n_images_counted"] * len(manifest["models"])
    print(f"the run's counting per image and model {counting / forwards * 1e3:.1f} ms over "
          f"the plain forward {plain_s * 1e3:.1f} ms (same model and batch, timed after the "
          f"run): {counting / forwards / plain_s:.3f} (target <= 1.2)")
    model_only = sum(v for k, v in timings.items() if k.startswith("results_s/")
                     and k.split("/")[1] in ("salience", "qk"))
    # a run without them would also be shorter by as much: the share is of that run
    print(f"of which model-only analyses (salience battery, qk weights) {model_only:.1f} s; "
          f"a run without them: fixed costs {fixed - model_only:.1f} s = "
          f"{(fixed - model_only) / (wall - model_only):.1%} of its {wall - model_only:.1f} s")
    named = ("load_s", "end_calibration_s", "checkpoint_s", "write_s", "report_s")
    rest = {k: timings.get(k, 0.0) for k in named}
    rest["results_s (less model-only)"] = timings.get("results_s", 0.0) - model_only
    rest["other (start-up, imports, gathering)"] = fixed - model_only - sum(rest.values())
    print("fixed costs by part: " + ", ".join(f"{k} {v:.1f}" for k, v in rest.items()))


def demo_batches(model, cfg: StudyConfig, n: int) -> list[dict]:
    """The first ``n`` batches of the study's images (decoded in this process)."""
    from vitprobe.data import make_loader, open_images

    source = open_images(cfg.images, n_images=cfg.n_images, seed=cfg.seed)
    loader = make_loader(source, model.preprocess, batch_size=cfg.batch_size, workers=0,
                         patch_size=model.patch_size)
    batches = []
    for batch in loader:
        batches.append(batch)
        if len(batches) == n:
            break
    return batches


def plain_forward_per_image(args) -> float:
    """Median seconds per image of the default model's plain forward on demo images."""
    cfg = StudyConfig(batch_size=args.batch)
    model = vitprobe.load_model(cfg.model)
    pixels = demo_batches(model, cfg, 1)[0]["pixels"]
    times = []
    with torch.inference_mode():
        for _ in range(1 + args.repeats):
            start = time.perf_counter()
            model.adapter.forward(pixels)
            times.append(time.perf_counter() - start)
    return statistics.median(times[1:]) / pixels.shape[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="alternations per round")
    parser.add_argument("--rounds", type=int, default=3,
                        help="timed rounds (0: none; with --device-path, the host work only)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--n-images", type=int, default=None, help="images of the run")
    parser.add_argument("--model", default=None,
                        help="the counting pass of the default study's analyses on another "
                        "model (e.g. timm:vit_base_patch16_224; with --skip-run)")
    parser.add_argument("--random-init", action="store_true",
                        help="--model with random weights (no hub here)")
    parser.add_argument("--device", default="cpu", help="the counting pass's device")
    parser.add_argument("--dtype", default="float32", help="the counting pass's dtype")
    parser.add_argument("--device-path", action="store_true",
                        help="the accelerator code path on CPU tensors, and its torch calls "
                        "and host waits per batch (printed on CUDA anyway)")
    parser.add_argument("--tiny-tensors", action="store_true",
                        help="--model's structure with tiny tensors (timm only): with "
                        "--device-path, the host's time per batch without the arithmetic")
    parser.add_argument("--skip-run", action="store_true", help="counting pass only")
    parser.add_argument("--only-run", action="store_true", help="the default run only")
    args = parser.parse_args()
    if (args.model or args.random_init or args.device != "cpu" or args.tiny_tensors
            or args.dtype != "float32" or args.device_path) and not args.skip_run:
        parser.error("--model, --random-init, --device, --dtype and --device-path time the "
                     "counting pass only: add --skip-run")
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.only_run:
        counting_pass(args)
    if not args.skip_run:
        default_run(args)


if __name__ == "__main__":
    main()
