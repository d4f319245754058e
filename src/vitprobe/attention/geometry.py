"""One layer, one batch: angles between token embeddings and the attention they receive.

The pair set of a layer is every ordered pair (query i, key j) of *selected* tokens with
``i != j``: the patch tokens by default, every token (prefix included) on request. The
diagonal is left out because the angle of a token with itself is 0 by definition and a
token's attention to itself says nothing about similarity between patches.

For embeddings ``e_i`` (``blocks.l.ln1`` by default: the tokens as attention sees them,
Philip, Pan & Schwartz, poster "Similarity or dissimilarity?") the angle is

.. math::  \\theta_{ij} = \\frac{180}{\\pi} \\arccos \\frac{e_i \\cdot e_j}{|e_i|\\,|e_j|}
           \\in [0, 180] \\text{ degrees},

and the *centred* variant uses ``e - mu`` with ``mu`` the dataset mean token of the layer,
because token embeddings are anisotropic (the cosine between tokens of unrelated images is
positive; Pan et al. 2024, arXiv 2405.14880). Both cosines come from one Gram matmul of
the unit tokens ``u = e / |e|``: with ``a_i = e_i . mu``, ``m = |mu|^2`` and
``s_i = 1 / |e_i - mu|``,

.. math::  \\cos^c_{ij} = \\cos_{ij}\\, w_i w_j - (p_i s_j + s_i p_j),\\qquad
           w_i = |e_i| s_i,\\quad p_i = (a_i - m/2) s_i,

an elementwise rank-two correction. In float32 it loses ``log10(|e|^2 / |e - mu|^2)``
digits of the cosine (about one for tokens whose anisotropy cosine is 0.9); beyond a
ratio of 100 the centred Gram is formed directly.

Cost per layer (batch B, T tokens, H heads, d width): one (B, T, d) Gram, elementwise work
on (B, T, T), and on the (B, H, T, T) tensors: one scatter of the attention into *joint*
(raw x centred) angle bins, which gives both variants' histograms at the price of one,
two skinny matmuls and a few reductions. Nothing loops over heads or images. Excluded
pairs (prefix tokens, diagonal) stay in the (T, T) layout with weight 0 and a discard
bin, so no non-contiguous patch block is ever copied out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from vitprobe._jit import jit_enabled
from vitprobe.attention._kernels import angle_sums
from vitprobe.errors import ConfigurationError
from vitprobe.record.accumulator import resolve_threads, run_parallel

__all__ = ["LayerSums", "Scratch", "attention_from_qk", "compiled", "layer_sums", "pair_geometry"]

#: above this |mu|^2 / mean |e - mu|^2 the centred Gram is formed directly: the rank-two
#: correction would lose more than two digits of the cosine to float32 cancellation
_DIRECT_CENTRING_ABOVE = 100.0


class Scratch:
    """Named buffers reused across layers and batches.

    A fresh multi-megabyte tensor per layer costs page faults (the allocator returns
    large blocks to the system) comparable to the arithmetic done on it, so every large
    temporary of a layer lives here, allocated once per shape.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype,
            device: torch.device) -> torch.Tensor:
        """An uninitialised buffer ``name`` of this shape, dtype and device."""
        b = self._buffers.get(name)
        if b is None or tuple(b.shape) != tuple(shape) or b.dtype != dtype \
                or b.device != device:
            b = self._buffers[name] = torch.empty(shape, dtype=dtype, device=device)
        return b

    def clear(self) -> None:
        self._buffers.clear()


def _zero_excluded(x: torch.Tensor, start: int) -> torch.Tensor:
    """Zero pairs outside the pair set of a (B, [H,] T, T, ...) tensor, in place.

    The token axes are the ones right after the batch (and head) axes: dims -2, -1 for
    (B, H, T, T) tensors; dims 1, 2 for (B, T, T, V) ones (pass ``x.movedim(-1, 1)``).
    """
    if start:
        x[..., :start, :].zero_()
        x[..., :, :start].zero_()
    x.diagonal(dim1=-2, dim2=-1).zero_()
    return x


@dataclass
class PairGeometry:
    """Angles of all variants for one batch, variant-major so that each slice is contiguous.

    Attributes:
        cos: (V, B, T, T) cosine of each pair, 0 where the pair is excluded.
        theta: (V, B, T, T) angle in *radians* (sums are converted to degrees in
            float64), 0 where excluded.
        joint_bin: (B, T * T) int64 joint bin ``b_0 * (K + 1) + b_1`` of the variants'
            angle bins (``b_0`` alone for one variant); ``K`` is the discard bin of
            excluded pairs.

    With ``pair_geometry(..., cosines_only=True)``, ``cos`` is not yet clamped or
    zeroed and ``theta`` and ``joint_bin`` are None.
    """

    cos: torch.Tensor
    theta: torch.Tensor | None
    joint_bin: torch.Tensor | None


def _inv_norm(sq: torch.Tensor) -> torch.Tensor:
    """1 / |x| from |x|^2; a zero-norm token gets 0 (its cosines are 0: 90 degrees)."""
    return torch.where(sq > 0, sq.clamp_min(torch.finfo(sq.dtype).tiny).rsqrt(),
                       torch.zeros_like(sq))


def _gram(u: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out = u u^T`` for (B, T, d) ``u``: the upper rows and the lower-right block by
    matmul, the lower-left block mirrored (3/4 of the multiply-adds of one product; CPU,
    where the product is the bottleneck)."""
    h = u.shape[1] // 2
    if h < 16 or u.device.type != "cpu" or not out.is_contiguous():
        return torch.bmm(u, u.transpose(1, 2), out=out)
    torch.bmm(u[:, :h], u.transpose(1, 2), out=out[:, :h])
    torch.bmm(u[:, h:], u[:, h:].transpose(1, 2), out=out[:, h:, h:])
    out[:, h:, :h] = out[:, :h, h:].transpose(1, 2)
    return out


def pair_geometry(
    embeddings: torch.Tensor,
    start: int,
    n_bins: int,
    variants: tuple[str, ...],
    *,
    mean_token: torch.Tensor | None = None,
    scratch: Scratch | None = None,
    cosines_only: bool = False,
    direct_centring: bool | None = None,
) -> PairGeometry:
    """Cosines, angles and joint angle bins of every pair of one batch.

    Args:
        embeddings: (B, T, d) tokens, already in the compute dtype.
        start: first selected token (the number of prefix tokens, or 0).
        n_bins: equal-width angle bins over [0, 180] degrees (90 is an edge when even).
        variants: ``("raw",)``, ``("centered",)`` or ``("raw", "centered")``.
        mean_token: (d,) the dataset mean token, needed for ``centered``; or (B, d), one
            per image (images of several layers stacked along the batch).
        scratch: buffers to reuse (the result lives in them until the next call).
        cosines_only: stop after the cosines (not yet clamped to [-1, 1], excluded
            pairs not zeroed; ``theta`` and ``joint_bin`` are None): the compiled
            :func:`layer_sums` does the rest row by row.
        direct_centring: form the centred Gram from ``e - mean_token`` (True) or by the
            rank-two correction of the raw one (False); None (default) chooses from the
            batch (direct above an anisotropy ratio of 100), which reads two values back
            to the host: on an accelerator pass True, so that the host never waits.
    """
    e = embeddings
    scratch = scratch or Scratch()
    B, T, _ = e.shape
    V = len(variants)
    sq = (e * e).sum(-1)
    u = e * _inv_norm(sq)[..., None]
    shape, dev = (V, B, T, T), e.device
    cos = scratch.get("cos", shape, e.dtype, dev)
    raw = cos[0] if variants[0] == "raw" else scratch.get("cos_raw", shape[1:], e.dtype, dev)
    _gram(u, raw)
    if "centered" in variants:
        out = cos[V - 1]
        mu = mean_token.to(e.dtype)
        if mu.dim() == 1:
            a, m = e @ mu, mu @ mu
        else:  # one mean token per image: (B, d)
            a = torch.bmm(e, mu[:, :, None]).squeeze(-1)
            m = (mu * mu).sum(-1, keepdim=True)
            mu = mu[:, None, :]
        sq_c = (sq - 2 * a + m).clamp_min(0)
        if direct_centring is None:
            direct_centring = float(m.mean()) > _DIRECT_CENTRING_ABOVE * float(sq_c.mean())
        if direct_centring:
            d = e - mu  # its norms from d itself: sq_c lost digits to the cancellation
            _gram(d * _inv_norm((d * d).sum(-1))[..., None], out)
        else:
            s = _inv_norm(sq_c)
            w = sq.sqrt() * s
            p = (a - 0.5 * m) * s
            torch.mul(raw, w[:, :, None], out=out)
            out.mul_(w[:, None, :])
            # subtract p_i s_j + s_i p_j in one batched rank-two product
            out.baddbmm_(torch.stack([p, s], -1), torch.stack([s, p], -1).transpose(1, 2),
                         alpha=-1.0)
    if cosines_only:
        return PairGeometry(cos=cos, theta=None, joint_bin=None)
    cos.clamp_(-1.0, 1.0)
    theta = torch.acos(cos, out=scratch.get("theta", shape, e.dtype, dev))
    # bins: truncation is floor for theta >= 0; theta = pi belongs to the last bin and
    # 90 degrees is the lower edge of bin n_bins / 2
    scaled = torch.mul(theta, n_bins / math.pi, out=scratch.get("scaled", shape, e.dtype, dev))
    b = scratch.get("bins", shape, torch.int64, dev).copy_(scaled).clamp_(max=n_bins - 1)
    joint = b[0]
    if V == 2:
        joint.mul_(n_bins + 1).add_(b[1])
    discard = n_bins if V == 1 else (n_bins + 1) ** 2 - 1
    if start:
        joint[:, :start, :] = discard
        joint[:, :, :start] = discard
    joint.diagonal(dim1=1, dim2=2).fill_(discard)
    _zero_excluded(cos, start)
    _zero_excluded(theta, start)
    return PairGeometry(cos=cos, theta=theta, joint_bin=joint.view(B, T * T))


def attention_from_qk(
    q: torch.Tensor,
    k: torch.Tensor,
    scale: float,
    dtype: torch.dtype,
    scratch: Scratch,
    *,
    softmax: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits ``(q * scale) k^T`` and their softmax, written into reusable buffers.

    As :class:`vitprobe.record.Recorder` forms them (the scale multiplies the small
    queries, not the (B, H, T, T) logits, as eager timm attention does). Every tensor lives in
    ``scratch`` (q, k: (B, H, T, d_head); returns (B, H, T, T) logits and attention).
    ``softmax=False`` returns the logits and None (the compiled sums form the softmax).
    """
    B, H, T, dh = q.shape
    dev = q.device
    qs = torch.mul(q, scale, out=scratch.get("q", (B, H, T, dh), dtype, dev))
    kc = scratch.get("k", (B, H, T, dh), dtype, dev).copy_(k)  # contiguous: BLAS reads k^T
    scores = torch.matmul(qs, kc.transpose(-1, -2),
                          out=scratch.get("scores", (B, H, T, T), dtype, dev))
    if not softmax:
        return scores, None
    pattern = scratch.get("pattern", (B, H, T, T), dtype, dev)
    torch.ops.aten._softmax.out(scores, -1, False, out=pattern)
    return scores, pattern


@dataclass
class LayerSums:
    """Per-batch sums of one layer, in float64 (numbers of pairs in int64).

    Shapes: ``V`` variants, ``H`` heads, ``K`` angle bins.

    Attributes:
        count: (V, K) pairs per angle bin.
        sum_theta, sum_theta2: (V,) sum of theta and theta^2 over pairs (degrees, deg^2).
        sum_cos, sum_cos2: (V,) sum of cos and cos^2 over pairs.
        sum_rowcos2: (V,) sum over query tokens of (sum over its keys of cos)^2.
        attn_hist: (V, H, K) attention mass A_ij per angle bin.
        sum_attn_theta: (V, H) sum of A_ij * theta_ij.
        sum_logit, sum_logit2: (H,) sum of the logits s_ij and s_ij^2 over pairs.
        sum_dev2: (H,) sum of (s_ij - r_i)^2, r_i the query's mean logit over its keys.
        sum_logit_cos: (V, H) sum of s_ij cos_ij.
        sum_dev_cos: (V, H) sum of (s_ij - r_i) cos_ij.
    """

    count: torch.Tensor
    sum_theta: torch.Tensor
    sum_theta2: torch.Tensor
    sum_cos: torch.Tensor
    sum_cos2: torch.Tensor
    sum_rowcos2: torch.Tensor
    attn_hist: torch.Tensor
    sum_attn_theta: torch.Tensor
    sum_logit: torch.Tensor
    sum_logit2: torch.Tensor
    sum_dev2: torch.Tensor
    sum_logit_cos: torch.Tensor
    sum_dev_cos: torch.Tensor


def _marginals(joint: torch.Tensor, n_bins: int, V: int) -> torch.Tensor:
    """(..., joint bins) -> (V, ..., K): each variant's histogram, discard bin dropped."""
    if V == 1:
        return joint[..., :n_bins].unsqueeze(0)
    j = joint.unflatten(-1, (n_bins + 1, n_bins + 1))
    return torch.stack([j.sum(-1)[..., :n_bins], j.sum(-2)[..., :n_bins]])


def layer_sums(
    geometry: PairGeometry,
    scores: torch.Tensor,
    pattern: torch.Tensor | None,
    start: int,
    n_bins: int,
    *,
    scores_writable: bool = False,
    scratch: Scratch | None = None,
    threads: int | None = None,
    groups: int | None = None,
) -> LayerSums:
    """Accumulate one layer of one batch.

    Args:
        geometry: :func:`pair_geometry` of the batch.
        scores: (B, H, T, T) pre-softmax logits ``q k^T * scale`` (``attn.scores``).
        pattern: (B, H, T, T) attention probabilities (``attn.pattern``); None: the
            softmax of ``scores`` (formed inside the kernel on the compiled path).
        start: first selected token.
        scores_writable: ``scores`` is a scratch buffer that may be overwritten (it is
            turned into the centred logits in place).
        scratch: buffers to reuse (else the centred logits need a new (B, H, T, T)).
        threads: CPU threads over the images of the batch (default torch's count).
        groups: the batch holds ``groups`` layers' images one after the other (equal
            numbers): every sum gets a leading (groups,) axis, one per layer. The
            accelerator path stacks layers this way, so that the host queues one set of
            kernels for several layers (torch path only).

    Given cosines only (``pair_geometry(..., cosines_only=True)``, CPU) one compiled
    pass over each image does all of it, angles included
    (:func:`vitprobe.attention._kernels.angle_sums`); the torch code below is the
    reference, and the path on accelerators.

    Per image and head, sums over the T^2 pairs run in the compute dtype (float32:
    relative error ~1e-7, cascade summation or BLAS); across images everything is
    float64. The logits are centred per query row before any sum of squares or product,
    so the per-query offsets (which the softmax ignores, and which can be large) do not
    cancel catastrophically.
    """
    if geometry.theta is None:
        if scores.device.type != "cpu" or groups is not None:
            raise ConfigurationError(
                "pair_geometry(..., cosines_only=True) is for single layers of CPU tensors")
        return _layer_sums_compiled(geometry, scores, pattern, start, n_bins, threads)
    if pattern is None:
        pattern = scores.softmax(-1)
    B, H, T, _ = scores.shape
    G = 1 if groups is None else int(groups)
    if G < 1 or B % G:
        raise ConfigurationError(f"a batch of {B} images does not split into {G} groups")

    def per_group(x: torch.Tensor, dim: int) -> torch.Tensor:
        """Sum over the images of each group: ``dim`` (the batch axis) becomes groups."""
        return x.unflatten(dim, (G, B // G)).sum(dim + 1)

    scratch = scratch or Scratch()
    V = geometry.cos.shape[0]
    dtype = geometry.cos.dtype
    f64 = torch.float64
    n_keys = T - start - 1
    a_flat = pattern.reshape(B, H, T * T)

    # angle histograms: one scatter into joint (raw, centred) bins gives both variants
    n_joint = n_bins + 1 if V == 1 else (n_bins + 1) ** 2
    idx = geometry.joint_bin.view(B, 1, T * T)
    pdt, dev = pattern.dtype, pattern.device
    hist = scratch.get("hist", (B, H, n_joint), pdt, dev).zero_()
    hist.scatter_add_(2, idx.expand(B, H, T * T), a_flat)
    ones = torch.ones((), dtype=torch.int64, device=dev).expand(B, T * T)
    counts = scratch.get("counts", (B, n_joint), torch.int64, dev).zero_()
    counts.scatter_add_(1, geometry.joint_bin, ones)  # exact integers
    attn_hist = _marginals(per_group(hist, 0).to(f64), n_bins, V)  # (V, G, H, K)
    count = _marginals(per_group(counts, 0), n_bins, V)  # (V, G, K)

    # (B, T^2, V) views of the variant-major angles: column-major per image, which BLAS
    # reads in place (no copy)
    theta = geometry.theta.view(V, B, T * T)
    cos = geometry.cos.view(V, B, T * T)
    sum_attn_theta = per_group(torch.bmm(a_flat, theta.permute(1, 2, 0)).to(f64), 0)  # (G, H, V)

    # per-query mean logit over its keys (diagonal excluded): the softmax-invariant offset
    s = scores if scores.dtype == dtype else scores.to(dtype)
    r = (s[..., start:].sum(-1) - s.diagonal(dim1=-2, dim2=-1)) / n_keys  # (B, H, T)
    if scores_writable and s is scores:
        dev = s.sub_(r[..., None])
    else:
        dev = torch.sub(s, r[..., None], out=scratch.get("dev", tuple(s.shape), dtype,
                                                          s.device))
    _zero_excluded(dev, start)
    # float32 norms along the short rows, float64 across rows and images
    sum_dev2 = per_group(torch.linalg.vector_norm(dev, dim=3).to(f64).square(), 0).sum(-1)
    dev_flat = dev.view(B, H, T * T)
    sum_dev_cos = per_group(torch.bmm(dev_flat, cos.permute(1, 2, 0)).to(f64), 0)  # (G, H, V)
    r_sel = r[:, :, start:].to(f64).unflatten(0, (G, B // G))  # (G, B / G, H, T - start)
    rowcos = geometry.cos[:, :, start:].sum(3).to(f64).unflatten(1, (G, B // G))
    deg = 180.0 / math.pi
    r_rowcos = torch.einsum("gbhi,vgbi->gvh", r_sel, rowcos)
    sums = LayerSums(  # variant-major (V, G, ...) or (G, H, V) here; (G, V, ...) below
        count=count,
        sum_theta=per_group(theta.sum(2).to(f64), 1) * deg,
        sum_theta2=per_group(torch.linalg.vector_norm(theta, dim=2).to(f64).square(), 1)
        * deg**2,
        sum_cos=per_group(cos.sum(2).to(f64), 1),
        sum_cos2=per_group(torch.linalg.vector_norm(cos, dim=2).to(f64).square(), 1),
        sum_rowcos2=rowcos.square().sum((2, 3)),
        attn_hist=attn_hist,
        sum_attn_theta=sum_attn_theta.transpose(1, 2) * deg,
        # sum_j (s_ij - r_i) = 0, so sum s^2 = sum dev^2 + K sum r^2, sum s = K sum r,
        # and sum s cos = sum dev cos + sum_i r_i sum_j cos_ij
        sum_logit=n_keys * r_sel.sum((1, 3)),
        sum_logit2=sum_dev2 + n_keys * r_sel.square().sum((1, 3)),
        sum_dev2=sum_dev2,
        sum_logit_cos=sum_dev_cos.transpose(1, 2) + r_rowcos,
        sum_dev_cos=sum_dev_cos.transpose(1, 2),
    )
    for name in ("count", "sum_theta", "sum_theta2", "sum_cos", "sum_cos2", "sum_rowcos2",
                 "attn_hist"):  # variant-major -> group-major
        setattr(sums, name, getattr(sums, name).movedim(1, 0))
    if groups is None:  # one layer: no group axis
        for name, value in vars(sums).items():
            setattr(sums, name, value[0])
    return sums



def compiled(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the compiled CPU path is used for tensors on ``device`` in ``dtype``
    (float32 only: float64 is the validation precision, taken by the torch reference)."""
    return device.type == "cpu" and dtype == torch.float32 and jit_enabled()


def _layer_sums_compiled(geometry: PairGeometry, scores: torch.Tensor,
                         pattern: torch.Tensor | None,
                         start: int, n_bins: int, threads: int | None) -> LayerSums:
    """:func:`layer_sums` through the compiled kernel, images split over threads."""
    B, H, T, _ = scores.shape
    V = geometry.cos.shape[0]
    cos = geometry.cos.numpy()
    sc = _numpy_float(scores)
    pa = np.zeros((0, 0, 0, 0), sc.dtype) if pattern is None else _numpy_float(pattern)
    n_parts = max(1, min(resolve_threads(threads), B))
    bounds = [B * k // n_parts for k in range(n_parts + 1)]
    parts = [{"count": np.zeros((V, n_bins + 1), np.int64), "geo": np.zeros((V, 5)),
              "attn_hist": np.zeros((V, H, n_bins + 1)), "attn_theta": np.zeros((V, H)),
              "logit": np.zeros((H, 3)), "dev_cos": np.zeros((V, H)),
              "rowcos_r": np.zeros((V, H))} for _ in range(n_parts)]

    def run(k: int) -> None:
        angle_sums(cos, sc, pa, start, n_bins, n_bins / math.pi, bounds[k],
                   bounds[k + 1], **parts[k])

    run_parallel(run, n_parts, n_parts)
    tot = {k: torch.from_numpy(sum(p[k] for p in parts)) for k in parts[0]}
    geo, logit, n_keys = tot["geo"], tot["logit"], T - start - 1
    deg = 180.0 / math.pi
    return LayerSums(
        count=tot["count"][:, :n_bins],
        sum_theta=geo[:, 0] * deg,
        sum_theta2=geo[:, 1] * deg**2,
        sum_cos=geo[:, 2],
        sum_cos2=geo[:, 3],
        sum_rowcos2=geo[:, 4],
        attn_hist=tot["attn_hist"][..., :n_bins],
        sum_attn_theta=tot["attn_theta"] * deg,
        sum_logit=n_keys * logit[:, 0],
        sum_logit2=logit[:, 2] + n_keys * logit[:, 1],
        sum_dev2=logit[:, 2],
        sum_logit_cos=tot["dev_cos"] + tot["rowcos_r"],
        sum_dev_cos=tot["dev_cos"],
    )


def _numpy_float(t: torch.Tensor) -> np.ndarray:
    """A contiguous float32/float64 numpy view of a CPU tensor (a copy where needed)."""
    if t.dtype not in (torch.float32, torch.float64):
        t = t.float()
    return t.contiguous().numpy()
