"""``AngleAccumulator``: attention against the angle between token embeddings, streamed.

The image half of "Similarity or dissimilarity?" (Philip, Pan & Schwartz, poster; Pan et
al. 2024, arXiv 2405.14880): per layer and head, do queries give their attention A_ij to
keys whose embedding makes a small angle with their own (similar patches) or one above
90 degrees (dissimilar patches)? Over all images, for every ordered pair (i, j), i != j,
of patch tokens (prefix tokens on request) the accumulator keeps

* the distribution of angles over pairs (the *baseline*, per layer: heads share the
  embeddings), as counts in equal bins over [0, 180] degrees;
* the attention mass per angle bin, per head (so mean attention per bin = mass / count);
* exact sums for the means: sum theta, sum theta^2 over pairs; sum A theta per head;
* sums for the Pearson correlation between the logits s_ij = q_i k_j^T / sqrt(d_head)
  (as ``attn.scores``) and cos theta_ij, pooled over pairs, and *within query* (logits
  centred per query row, the part of the logits the softmax sees).

Each quantity exists for the ``raw`` embeddings and, because token embeddings are
anisotropic, for ``centered`` ones (the dataset mean token of the layer subtracted; it
is learned in a calibration pass and frozen by :meth:`end_calibration`).

State is fixed-size (float64 sums, int64 counts): memory is constant in the number of
images, and shards merge exactly by addition (they must share the calibrated mean).

With ``counts_calibration=True`` the calibration images are counted too, so they are
forwarded once (:class:`~vitprobe.record.Accumulator`): the batches given to
:meth:`AngleAccumulator.calibrate` are kept (references to the recorded embeddings,
queries and keys) until the mean token is frozen, then counted. The mean token is learned
from the first ``calibration_images`` images only (default 64), which bounds that memory:
per image ``L x 3 x T x d`` values in the model's dtype, 14.2 MB for DINOv2-S/14 in
float32 (12 layers, 257 tokens, d = 384; its HF attention projects q and k separately)
and 29 MB for a timm ViT-B/16 (whose q and k are views of the fused qkv output, which
they keep alive): 0.91 GB and 1.86 GB at 64 images (half that in bfloat16).

How many images the mean token needs (offline DINOv2-S/14, demo images, centred variant,
mean token from the first n images against n = 256, the same 128 later images streamed):
in random order, n = 64 moves the per-head angle shift by at most 0.26 degrees and the
logit-cosine correlation by 0.02, the mean token by 11 % of its norm (median over
layers); n = 32: 0.59 degrees, 0.05, 21 %. Which images matter more than how many: in
catalogue order (32 crops per photo, so 64 images are 2 photos and 256 are 8 of the 16)
n = 64 moves them by 1.19 degrees, 0.08 and 68 %. The calibration images must be a
random sample of the set.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Self

import numpy as np
import torch

from vitprobe.attention.geometry import (
    LayerSums,
    Scratch,
    attention_from_qk,
    compiled,
    layer_sums,
    pair_geometry,
)
from vitprobe.errors import (
    AlreadyCalibratedError,
    ConfigurationError,
    IncompatibleStateError,
    InputShapeError,
    InsufficientDataError,
    MissingSiteError,
    NonFiniteInputError,
    NotCalibratedError,
)
from vitprobe.record.accumulator import (
    Accumulator,
    nonfinite_rows,
    run_parallel,
    torch_threads,
)
from vitprobe.record.sites import site_name

__all__ = ["EMBEDDINGS", "VARIANTS", "AngleAccumulator"]

EMBEDDINGS = ("ln1", "resid_pre")
VARIANTS = ("raw", "centered")
_PRECISION = {"float32": torch.float32, "float64": torch.float64}

# state entries: name -> (shape key, dtype); shape keys are expanded in _shapes()
_STATE: dict[str, tuple[str, Any]] = {
    "count": ("LVK", torch.int64),
    "sum_theta": ("LV", torch.float64),
    "sum_theta2": ("LV", torch.float64),
    "sum_cos": ("LV", torch.float64),
    "sum_cos2": ("LV", torch.float64),
    "sum_rowcos2": ("LV", torch.float64),
    "attn_hist": ("LVHK", torch.float64),
    "sum_attn_theta": ("LVH", torch.float64),
    "sum_logit": ("LH", torch.float64),
    "sum_logit2": ("LH", torch.float64),
    "sum_dev2": ("LH", torch.float64),
    "sum_logit_cos": ("LVH", torch.float64),
    "sum_dev_cos": ("LVH", torch.float64),
}


class AngleAccumulator(Accumulator):
    """Streaming angle/attention statistics of every followed layer and head.

    Parameters
    ----------
    n_layers, n_heads, n_prefix, n_tokens, d_model
        The model's geometry (:meth:`from_model` reads them from a ``ProbedViT``);
        ``n_tokens`` counts prefix and patch tokens.
    bins
        Equal angle bins over [0, 180] degrees; must be even so that 90 degrees is a bin
        edge (the share above 90 degrees is then exact). Default 90 (2-degree bins).
    embedding
        ``"ln1"`` (default): tokens as attention sees them, after the pre-attention
        LayerNorm; ``"resid_pre"``: the raw residual stream entering the block.
    include_prefix
        Also pair the prefix tokens (class, distillation, registers) with everything.
        Default False: patch tokens only.
    variants
        ``("raw", "centered")`` (default) or one of them. ``centered`` needs a
        calibration pass (the mean token over the selected tokens of the calibration
        images, per layer, float64).
    layers
        0-based layers to follow; default all.
    precision
        ``"float32"`` (default) for the per-batch matmuls and elementwise work, or
        ``"float64"`` (slow; for checks: logits and softmax are then formed in float64
        too). Sums across batches are float64 either way.
    attn_scale
        The logit scale (``d_head ** -0.5``), to compute logits and attention from the
        recorded queries and keys; :meth:`from_model` fills it in.
    device
        Where state and work live; default the device of the first batch.
    calibration_images
        Images whose selected tokens give the mean token: the first ones given to
        :meth:`calibrate` (None: all of them). Default 64 (see the module notes).
    counts_calibration
        Count the images given to :meth:`calibrate` too (the caller must not pass them to
        :meth:`update` again); the sums equal those of ``calibrate`` + ``end_calibration``
        + ``update`` on the same batches. The recorded tensors are kept until counted
        (do not modify them in place); batches holding NaN or inf are refused at once.

    Sites read (:attr:`sites`): ``blocks.{l}.{embedding}``, ``blocks.{l}.attn.q`` and
    ``blocks.{l}.attn.k`` of every followed layer. The logits and the softmax are formed
    here, in buffers reused across layers and batches, with the recorder's operations.
    A batch that also carries ``attn.scores`` and ``attn.pattern`` is read from those.

    Memory: the state is ``L V H K`` float64 plus ``L d`` for the mean token (kilobytes);
    the per-batch scratch is reused and holds about ``2 B H T^2`` floats (logits,
    attention) plus ``4 V B T^2`` (cosines, angles, bins): ~100 MB for DINOv2-S/14 at
    batch 16.
    """

    name = "angles"
    #: refuse batches holding NaN or inf in the sites read; the study runner, which drops
    #: such images itself before any accumulator sees the batch, turns it off (36 sums of
    #: the 60 it already did for DINOv2-S/14, about 1 % of the counting pass)
    check_finite: bool = True

    def __init__(
        self,
        n_layers: int,
        n_heads: int,
        n_prefix: int,
        n_tokens: int,
        d_model: int,
        *,
        bins: int = 90,
        embedding: str = "ln1",
        include_prefix: bool = False,
        variants: Sequence[str] = VARIANTS,
        layers: Iterable[int] | None = None,
        precision: str = "float32",
        attn_scale: float | None = None,
        device: str | torch.device | None = None,
        calibration_images: int | None = 64,
        counts_calibration: bool = False,
    ) -> None:
        if embedding not in EMBEDDINGS:
            raise ConfigurationError(f"embedding must be one of {EMBEDDINGS}, got {embedding!r}")
        variants = tuple(variants)
        if not variants or len(set(variants)) != len(variants) or set(variants) - set(VARIANTS):
            raise ConfigurationError(f"variants must be a non-empty subset of {VARIANTS}")
        if bins < 2 or bins % 2:
            raise ConfigurationError(
                f"bins must be even and >= 2 (90 degrees is an edge), got {bins}")
        if precision not in _PRECISION:
            raise ConfigurationError(f"precision must be one of {sorted(_PRECISION)}")
        self.n_layers, self.n_heads, self.d_model = int(n_layers), int(n_heads), int(d_model)
        self.n_prefix, self.n_tokens = int(n_prefix), int(n_tokens)
        self.bins, self.embedding, self.include_prefix = int(bins), embedding, bool(include_prefix)
        self.variants = tuple(v for v in VARIANTS if v in variants)  # canonical order
        self.layers = tuple(range(self.n_layers)) if layers is None else tuple(sorted(set(layers)))
        if not self.layers or min(self.layers) < 0 or max(self.layers) >= self.n_layers:
            raise ConfigurationError(f"layers must lie in 0..{self.n_layers - 1}")
        self.precision = precision
        self.attn_scale = None if attn_scale is None else float(attn_scale)
        self.start = 0 if self.include_prefix else self.n_prefix
        if self.n_tokens - self.start < 2:
            raise ConfigurationError("the pair set needs at least two tokens")
        self.needs_calibration = "centered" in self.variants
        self.sites = tuple(
            site_name(layer, kind)
            for layer in self.layers
            for kind in (embedding, "attn.q", "attn.k")
        )
        #: the sites the calibration pass reads (the embeddings only)
        self.calibration_sites = tuple(site_name(layer, embedding) for layer in self.layers)
        self.device = torch.device(device) if device is not None else None
        if calibration_images is not None and calibration_images < 1:
            raise ConfigurationError(f"calibration_images must be at least 1, got "
                                     f"{calibration_images}")
        self.calibration_images = calibration_images
        self.counts_calibration = bool(counts_calibration)
        #: calibration batches to count: the sites update() reads, by reference
        self._pending: list[dict[str, torch.Tensor]] = []
        self._calib_images = 0
        #: images per step of a thread on the compiled CPU path (bounds scratch memory:
        #: about 3.4 MB per image for DINOv2-S/14)
        self.chunk_images = 8
        self._scratch = Scratch()
        self._thread_scratch: list[Scratch] = []
        self._reset(self.device or torch.device("cpu"))

    @classmethod
    def from_model(cls, model: Any, **kwargs: Any) -> AngleAccumulator:
        """An accumulator shaped for ``model`` (a ``ProbedViT``); kwargs as the constructor."""
        kwargs.setdefault("attn_scale", model.arch.attn_scale)
        return cls(model.n_layers, model.n_heads, model.n_prefix, model.n_tokens, model.d_model,
                   **kwargs)

    # -- state ----------------------------------------------------------------------------
    def _shapes(self) -> dict[str, tuple[int, ...]]:
        sizes = {"L": len(self.layers), "V": len(self.variants), "H": self.n_heads,
                 "K": self.bins}
        return {k: tuple(sizes[c] for c in key) for k, (key, _) in _STATE.items()}

    def _reset(self, device: torch.device) -> None:
        shapes = self._shapes()
        self.n_images = 0
        self._state = {k: torch.zeros(shapes[k], dtype=dt, device=device)
                       for k, (_, dt) in _STATE.items()}
        self._calib_sum = torch.zeros(len(self.layers), self.d_model, dtype=torch.float64,
                                      device=device)
        self._calib_tokens = 0
        self._calib_images = 0
        self._pending = []
        self.mean_token: torch.Tensor | None = None  # (L, d) float64 once calibrated

    def _to(self, device: torch.device) -> None:
        if self.device == device and self._state["count"].device == device:
            return
        self.device = device
        self._state = {k: v.to(device) for k, v in self._state.items()}
        self._calib_sum = self._calib_sum.to(device)
        if self.mean_token is not None:
            self.mean_token = self.mean_token.to(device)

    @property
    def calibrated(self) -> bool:
        return self.mean_token is not None

    @property
    def compute_dtype(self) -> torch.dtype:
        return _PRECISION[self.precision]

    def config(self) -> dict[str, Any]:
        return {
            "n_layers": self.n_layers, "n_heads": self.n_heads, "n_prefix": self.n_prefix,
            "n_tokens": self.n_tokens, "d_model": self.d_model, "bins": self.bins,
            "embedding": self.embedding, "include_prefix": self.include_prefix,
            "variants": list(self.variants), "layers": list(self.layers),
            "precision": self.precision, "attn_scale": self.attn_scale,
        }

    def state_dict(self) -> dict[str, np.ndarray]:
        if self._pending:
            raise NotCalibratedError("AngleAccumulator holds calibration batches still to be "
                               "counted: call end_calibration() before state_dict()")
        out = {k: v.cpu().numpy().copy() for k, v in self._state.items()}
        out["n_images"] = np.asarray(self.n_images, dtype=np.int64)
        out["calib_sum"] = self._calib_sum.cpu().numpy().copy()
        out["calib_tokens"] = np.asarray(self._calib_tokens, dtype=np.int64)
        if self.mean_token is not None:
            out["mean_token"] = self.mean_token.cpu().numpy().copy()
        return out

    def calibration_state_dict(self) -> dict[str, np.ndarray]:
        """:meth:`state_dict` with every sum and count zeroed (``n_images = 0``): the
        frozen mean token, for other shards to start from."""
        state = self.state_dict()
        for key in _STATE:
            state[key] = np.zeros_like(state[key])
        state["n_images"] = np.asarray(0, np.int64)
        return state

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        self._pending = []
        shapes = self._shapes()
        device = self.device or torch.device("cpu")
        for k, (_, dt) in _STATE.items():
            arr = np.asarray(state[k])
            if arr.shape != shapes[k]:
                raise IncompatibleStateError(f"angle state {k!r} has shape {arr.shape}, "
                                             f"expected {shapes[k]} (different configuration?)")
            self._state[k] = torch.as_tensor(arr, device=device).to(dt).clone()
        self.n_images = int(state["n_images"])
        self._calib_sum = torch.as_tensor(np.asarray(state["calib_sum"], dtype=np.float64),
                                          device=device).clone()
        self._calib_tokens = int(state["calib_tokens"])
        self.mean_token = (torch.as_tensor(np.asarray(state["mean_token"], dtype=np.float64),
                                           device=device).clone()
                           if "mean_token" in state else None)
        self.device = device

    def merge(self, other: Self) -> Self:
        """Add ``other`` (same configuration, same frozen mean token, disjoint images)."""
        self.check_mergeable(other)
        if self.needs_calibration:
            if self.mean_token is None or other.mean_token is None or not torch.equal(
                self.mean_token.cpu(), other.mean_token.cpu()
            ):
                raise IncompatibleStateError(
                    "cannot merge centred angle statistics computed with different (or "
                    "missing) mean tokens: calibrate once and share the state "
                    "(load_state_dict) before streaming")
        for k, v in self._state.items():
            v.add_(other._state[k].to(v.device))
        self.n_images += other.n_images
        return self

    # -- calibration ----------------------------------------------------------------------
    def calibrate(self, cache: Mapping[str, Any]) -> None:
        """Add one batch to the mean token of every followed layer (selected tokens of
        the first ``calibration_images`` images); with ``counts_calibration`` keep the
        batch to be counted (count it at once when the mean token is already frozen)."""
        if self.calibrated:
            if self.counts_calibration:
                self.update(cache)
                return
            raise AlreadyCalibratedError("the mean token is already frozen (end_calibration)")
        n_batch = self._embeddings(cache, self.layers[0]).shape[0]
        if self.counts_calibration and n_batch:
            for layer in self.layers if self.check_finite else ():  # as update() would
                self._check_finite(cache, layer)
            kinds = (self.embedding, "attn.q", "attn.k", "attn.scores", "attn.pattern")
            self._pending.append({name: cache[name] for layer in self.layers for kind in kinds
                                  if (name := site_name(layer, kind)) in cache})
        room = (n_batch if self.calibration_images is None
                else self.calibration_images - self._calib_images)
        take = max(0, min(room, n_batch))
        if take:
            n = 0
            for li, layer in enumerate(self.layers):
                e = self._embeddings(cache, layer)
                self._to(self.device or e.device)
                sel = e[:take, self.start:].to(device=self.device, dtype=torch.float64)
                self._calib_sum[li] += sel.sum(dim=(0, 1))
                n = sel.shape[0] * sel.shape[1]
            self._calib_tokens += n
            self._calib_images += take
        if self.counts_calibration and self.calibration_images is not None \
                and self._calib_images >= self.calibration_images:
            self.end_calibration()

    def end_calibration(self) -> None:
        """Freeze the mean token (float64) learned by :meth:`calibrate`; with
        ``counts_calibration``, count the kept calibration batches (unless that happened
        when ``calibration_images`` was reached)."""
        if self.counts_calibration and self.calibrated:
            return
        if self._calib_tokens == 0:
            raise InsufficientDataError("calibration saw no images")
        self.set_mean_token(self._calib_sum / self._calib_tokens)
        pending, self._pending = self._pending, []
        while pending:
            self.update(pending.pop(0))

    def set_mean_token(self, mean_token: torch.Tensor | np.ndarray) -> None:
        """Install a (n_followed_layers, d_model) mean token directly (e.g. from a shard)."""
        t = (mean_token.detach().to(torch.float64) if isinstance(mean_token, torch.Tensor)
             else torch.as_tensor(np.asarray(mean_token, dtype=np.float64)))
        if t.shape != (len(self.layers), self.d_model):
            raise IncompatibleStateError(f"mean token must be {(len(self.layers), self.d_model)}, "
                                         f"got {tuple(t.shape)}")
        self.mean_token = t.to(self.device or torch.device("cpu"))

    # -- streaming ------------------------------------------------------------------------
    def _embeddings(self, cache: Mapping[str, Any], layer: int) -> torch.Tensor:
        name = site_name(layer, self.embedding)
        if name not in cache:
            raise MissingSiteError(
                f"recorded batch has no site {name!r}; record {self.sites[:3]}...")
        e = cache[name]
        if e.ndim != 3 or e.shape[1] != self.n_tokens or e.shape[2] != self.d_model:
            raise InputShapeError(f"{name}: expected (batch, {self.n_tokens}, {self.d_model}), "
                                  f"got {tuple(e.shape)} (input size differs from the model's?)")
        return e

    def _attention(self, cache: Mapping[str, Any], layers: Sequence[int], n_batch: int,
                   device: torch.device, rows: slice, scratch: Scratch,
                   ) -> tuple[torch.Tensor, torch.Tensor | None, bool]:
        """(scores, pattern, scores_writable) of the images ``rows`` of ``layers``
        (stacked along the batch, layer after layer), recorded or formed from q, k
        (pattern None: the compiled sums take the softmax themselves)."""
        shape = (n_batch, self.n_heads, self.n_tokens, self.n_tokens)
        recorded = [tuple(cache.get(site_name(layer, k)) for k in ("attn.scores",
                                                                    "attn.pattern"))
                    for layer in layers]
        if all(s is not None and a is not None for s, a in recorded):
            for layer, (s, a) in zip(layers, recorded, strict=True):
                if tuple(s.shape) != shape or tuple(a.shape) != shape:
                    raise InputShapeError(f"layer {layer}: attention of shape "
                                          f"{tuple(s.shape)}, expected {shape}")
            dt = self.compute_dtype
            return (_stacked([s[rows] for s, _ in recorded]).to(device),
                    _stacked([a[rows] for _, a in recorded]).to(device=device, dtype=dt), False)
        qs, ks = [], []
        for layer in layers:
            q, k = (cache.get(site_name(layer, kind)) for kind in ("attn.q", "attn.k"))
            if q is None or k is None:
                raise MissingSiteError(f"recorded batch has neither attn.q/attn.k nor "
                                       f"attn.scores/attn.pattern of layer {layer}; "
                                       f"record {list(self.sites[:3])}")
            if tuple(q.shape[:3]) != shape[:3] or tuple(k.shape[:3]) != shape[:3]:
                raise InputShapeError(f"layer {layer}: queries of shape {tuple(q.shape)}, "
                                      f"expected {shape[:3]} + (d_head,)")
            qs.append(q[rows])
            ks.append(k[rows])
        if self.attn_scale is None:
            raise ConfigurationError("attn_scale is needed to form attention from q and k "
                                     "(use AngleAccumulator.from_model)")
        s, a = attention_from_qk(_stacked(qs).to(device), _stacked(ks).to(device),
                                 self.attn_scale, self.compute_dtype, scratch,
                                 softmax=not self._compiled(device))
        return s, a, True

    @torch.no_grad()
    def update(self, cache: Mapping[str, Any]) -> None:
        """Add one recorded batch (every followed layer)."""
        if self.needs_calibration and not self.calibrated:
            raise NotCalibratedError("the centred variant needs calibrate() and end_calibration() "
                               "(or set_mean_token / load_state_dict) before update()")
        if self.check_finite:  # all checks first: a refused batch changes nothing
            for layer in self.layers:
                self._check_finite(cache, layer)
        e = self._embeddings(cache, self.layers[0])
        n_batch = e.shape[0]
        if n_batch == 0:
            return
        self._to(self.device or e.device)
        if self._compiled(self.device):
            self._update_compiled(cache, n_batch)
        else:
            # the accelerator path stacks layers; the CPU reference takes one at a time
            n = len(self.layers)
            parts = (self.steps(n, self._layer_bytes(n_batch), self.device)
                     if self.uses_device_path(self.device)
                     else [slice(li, li + 1) for li in range(n)])
            for part in parts:
                sums = self._layers(cache, range(part.start, part.stop), n_batch, self._scratch)
                for k, v in self._state.items():
                    v[part] += getattr(sums, k)
        self.n_images += n_batch

    def layers_per_step(self, n_batch: int) -> int:
        """Layers stacked along the batch in one step of the accelerator path: as many as
        keep its temporaries (logits, attention, cosines, angles, bins) within
        :attr:`device_step_bytes`, spread evenly over the steps."""
        return self.items_per_step(len(self.layers), self._layer_bytes(n_batch),
                                   self.device or torch.device("cpu"))

    def _layer_bytes(self, n_batch: int) -> int:
        """Bytes of one layer's temporaries on the accelerator path."""
        v = len(self.variants)
        size = torch.finfo(self.compute_dtype).bits // 8
        return n_batch * self.n_tokens**2 * (size * (3 * self.n_heads + 3 * v) + 8 * v)

    def _check_finite(self, cache: Mapping[str, Any], layer: int) -> None:
        """Refuse NaN or inf in the sites a layer reads (angles and bins of non-finite
        cosines are undefined), naming the site and the images."""
        for kind in (self.embedding, "attn.q", "attn.k", "attn.scores"):
            name = site_name(layer, kind)
            t = cache.get(name)
            if t is None or not t.is_floating_point():
                continue
            bad = nonfinite_rows(t)
            if bad is not None:
                rows = torch.nonzero(bad).flatten().tolist()
                raise NonFiniteInputError(f"{name} holds NaN or inf for image(s) {rows[:8]} "
                                          "of the batch; drop those images (vitprobe run "
                                          "skips them)")

    def _layers(self, cache: Mapping[str, Any], lis: range, n_batch: int, scratch: Scratch,
                rows: slice = slice(None), threads: int | None = None) -> LayerSums:
        """Sums of the followed layers ``lis`` (indices into :attr:`layers`) over the
        images ``rows`` of the batch, with a leading layer axis. The accelerator path
        stacks the layers' images along the batch; the compiled CPU path and the CPU
        reference take one layer at a time (``threads``: the compiled kernel's)."""
        dev = self.device
        assert dev is not None
        compiled = self._compiled(dev)
        layers = [self.layers[li] for li in lis]
        e = _stacked([self._embeddings(cache, layer)[rows] for layer in layers])
        scores, pattern, writable = self._attention(cache, layers, n_batch, dev, rows, scratch)
        mu = None
        if self.mean_token is not None and len(lis) == 1:  # one vector: the reference's
            mu = self.mean_token[lis.start]
        elif self.mean_token is not None:  # one mean token per stacked image
            n_rows = e.shape[0] // len(lis)
            mu = self.mean_token[lis.start : lis.stop, None].expand(
                len(lis), n_rows, self.d_model).reshape(-1, self.d_model)
        # the accelerator path centres the Gram directly: choosing the rank-two
        # correction from the batch's values would make the host wait for the device
        geometry = pair_geometry(e.to(device=dev, dtype=self.compute_dtype), self.start,
                                 self.bins, self.variants, mean_token=mu, scratch=scratch,
                                 cosines_only=compiled,
                                 direct_centring=True if self.uses_device_path(dev) else None)
        sums = layer_sums(geometry, scores, pattern, self.start, self.bins,
                          scores_writable=writable, scratch=scratch, threads=threads,
                          groups=None if compiled else len(layers))
        if compiled:  # one layer, no group axis: add it
            sums = LayerSums(**{k: v[None] for k, v in vars(sums).items()})
        return sums

    def _compiled(self, device: torch.device) -> bool:
        """Whether batches on ``device`` go through the compiled CPU kernel."""
        return not self.uses_device_path(device) and compiled(device, self.compute_dtype)

    def _update_compiled(self, cache: Mapping[str, Any], n_batch: int) -> None:
        """CPU: the images are split over ``torch.get_num_threads()`` threads; each forms
        the Gram matrix and the logits of its images (``chunk_images`` at a time, which
        bounds the scratch memory) with single-threaded torch ops and sums them with the
        compiled kernel. One image per thread from end to end beats torch's intra-op
        threading here: torch's worker threads keep spinning after each parallel op and
        would compete with the kernel for the cores. Torch's intra-op thread count is 1
        for the duration of the call (restored after)."""
        n_threads = max(1, min(torch.get_num_threads(), n_batch))
        while len(self._thread_scratch) < n_threads:
            self._thread_scratch.append(Scratch())
        bounds = [n_batch * k // n_threads for k in range(n_threads + 1)]
        partial: list[dict[str, torch.Tensor]] = [
            {k: torch.zeros_like(v) for k, v in self._state.items()} for _ in range(n_threads)]

        def work(t: int) -> None:
            scratch = self._thread_scratch[t]
            for first in range(bounds[t], bounds[t + 1], self.chunk_images):
                rows = slice(first, min(bounds[t + 1], first + self.chunk_images))
                for li in range(len(self.layers)):
                    sums = self._layers(cache, range(li, li + 1), n_batch, scratch, rows,
                                        threads=1)
                    for k, v in partial[t].items():
                        v[li : li + 1] += getattr(sums, k)

        with torch_threads(1):
            run_parallel(work, n_threads, n_threads)
        for part in partial:
            for k, v in self._state.items():
                v += part[k]

    # -- results --------------------------------------------------------------------------
    def sums(self) -> dict[str, np.ndarray]:
        """The raw state as numpy arrays (float64 sums, int64 counts)."""
        return {k: v.cpu().numpy() for k, v in self._state.items()}

    def result(self):  # -> xr.Dataset
        """Histograms and summaries as an :class:`xarray.Dataset` (see
        :func:`vitprobe.attention.result.angles_dataset`)."""
        from vitprobe.attention.result import angles_dataset

        if self.n_images == 0:
            raise InsufficientDataError("no images accumulated")
        mean = None if self.mean_token is None else self.mean_token.cpu().numpy()
        return angles_dataset(self.sums(), self.config(), self.n_images, mean_token=mean)


def _stacked(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """The tensors concatenated along the batch (the one tensor itself: no copy)."""
    return tensors[0] if len(tensors) == 1 else torch.cat(list(tensors))
