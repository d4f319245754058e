"""Per-stimulus measurements of the salience battery: one recorded forward per batch.

Pop-out and conjunction arrays (:func:`measure_arrays`), per layer l and head h, with
``A`` the attention pattern (query, key) and ``w_e`` the patch-area weights of element
e normalised to sum 1:

* attention element e receives from the patch tokens outside it,
  ``r_e = mean_{i outside e} sum_p A[i, p] w_e[p]`` (the area-weighted mean over e's
  tokens, so elements of different token counts compare), and from the class token,
  ``c_e = sum_p A[cls, p] w_e[p]``;
* ``log2_ratio = log2(r_s / mean_{d != s} r_d)`` for the singleton s against the
  distractors d (0: no preference; positive: the singleton stands out), and the
  ``percentile`` of r_s among the distractors' r_d (ties count one half; 0.5 at chance);
  both also for the attention averaged over heads (the layer's view, ``heads`` suffix);
* embedding angles between ``ln1`` patch tokens, averaged over token pairs with the
  same weights: singleton-distractor ``angle_singleton = mean_d theta(s, d)`` against
  distractor-distractor ``angle_distractors = mean_{d != d'} theta(d, d')``, in degrees.

Centre-surround stimuli (:func:`measure_surround`): the response of every channel of
``attn.out`` and ``mlp.out`` at the centre element (area-weighted mean over its tokens)
and the attention mass the centre's tokens give to the surround cells (summed over the
surround's tokens, averaged over the centre's tokens), per head.

All reductions run in float64 (the pattern's column sums: float32 runs of 32 query rows,
joined in float64) on patterns that the recorder recomputes in float32 from the q and k
the model used. An element covers a handful of patches (4 to 9 at the
default cell of 2 patches), so no reduction multiplies a whole (T, T) pattern by the
(patch, element) weights: what the elements' tokens receive from *all* patch queries
is one column sum per key, from which the queries inside the element (a small block
per element, gathered) are subtracted; the centre's rows are gathered the same way.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator

import numpy as np
import torch

from vitprobe.data.transforms import normalize
from vitprobe.models import ProbedViT
from vitprobe.salience.stimuli import StimulusBatch

__all__ = ["attention_maps", "measure_arrays", "measure_surround", "pixels_of"]

Progress = Callable[[str], None] | None


def pixels_of(model: ProbedViT, images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) float images in [0, 1] -> normalised (N, 3, H, W) model input."""
    return normalize(images, model.preprocess).to(model.device)


def _batches(n: int, batch_size: int) -> Iterator[slice]:
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def _distinct(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``first`` (U,): index of the first of each distinct image; ``which`` (N,): the
    distinct image of every image (``images[i]`` equals ``images[first[which[i]]]``)."""
    first: list[int] = []
    seen: dict[bytes, list[int]] = {}
    which = np.empty(len(images), np.int64)
    for i, image in enumerate(images):
        key = hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=16).digest()
        # a digest match is confirmed pixel for pixel before two forwards become one
        match = next((u for u in seen.get(key, ()) if np.array_equal(images[first[u]], image)),
                     None)
        if match is None:
            match = len(first)
            first.append(i)
            seen.setdefault(key, []).append(match)
        which[i] = match
    return np.asarray(first, np.int64), which


def _cls_index(model: ProbedViT) -> int | None:
    prefix = tuple(model.prefix_tokens)
    return prefix.index("cls") if "cls" in prefix else None


def _normalised(weights: torch.Tensor) -> torch.Tensor:
    total = weights.sum(-1, keepdim=True)
    return weights / total.clamp_min(1e-12)


def _footprints(weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Patch indices of each element's footprint, padded: (B, E, K) long, and a (B, E, K)
    float64 mask (1 on the footprint, 0 on padding); ``K`` is the largest footprint."""
    inside = weights > 0
    k = max(int(inside.sum(-1).max()), 1)
    # stable sort of "not inside" puts each footprint's patches first, in patch order
    order = torch.argsort((~inside).to(torch.uint8), dim=-1, stable=True)[..., :k]
    return order, torch.gather(inside, -1, order).double()


#: query rows summed in float32 before their partial sum joins the float64 total
_ROWS_PER_PARTIAL = 32


def _column_sums(pattern: torch.Tensor) -> torch.Tensor:
    """Sum over queries (dim -2) of a float32 pattern, in float64: (..., Q, K) -> (..., K).

    Runs of ``_ROWS_PER_PARTIAL`` rows are summed in float32 and the partial sums in
    float64 (error ~1e-7 relative, as one float64 sum; ``sum(dtype=float64)`` would first
    copy the whole pattern to float64, 14x slower at (16, 6, 256, 256)).
    """
    total = torch.zeros(pattern.shape[:-2] + pattern.shape[-1:], dtype=torch.float64)
    for start in range(0, pattern.shape[-2], _ROWS_PER_PARTIAL):
        total += pattern[..., start:start + _ROWS_PER_PARTIAL, :].sum(-2)
    return total


def _received_from_outside(pattern: torch.Tensor, pre: int, weights: torch.Tensor,
                           idx: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``r_e = sum_{i outside e} sum_p A[i, p] w_e[p] / #outside``, per head, float64.

    pattern (B, H, T, T); weights (B, E, P) normalised per element; idx, mask from
    :func:`_footprints`. Returns (B, H, E). All patch queries' attention to key p (a
    column sum) less that of the queries inside e: only e's (K, K) block is gathered.
    """
    B, H, T, _ = pattern.shape
    E, K = idx.shape[1:]
    column = _column_sums(pattern[:, :, pre:, pre:])  # (B, H, P)
    from_all = column @ weights.mT  # (B, H, E)
    tok = idx + pre
    flat = (tok[..., :, None] * T + tok[..., None, :]).reshape(B, 1, E * K * K)
    block = torch.gather(pattern.reshape(B, H, T * T), 2, flat.expand(B, H, -1))
    block = block.double().reshape(B, H, E, K, K)  # (query k1, key k2) inside e
    w_key = torch.gather(weights, 2, idx)  # (B, E, K): w_e at the footprint's patches
    from_inside = torch.einsum("bhekl,bek,bel->bhe", block, mask, w_key)
    n_out = weights.shape[-1] - mask.sum(-1)  # (B, E)
    return (from_all - from_inside) / n_out[:, None]


def _against_distractors(recv: torch.Tensor, target: torch.Tensor,
                         valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log2(r_s / mean r_d) and the percentile of r_s among r_d.

    recv (B, ..., E); target (B,); valid (B, E) bool. Returns two (B, ...) tensors.
    """
    b = torch.arange(recv.shape[0])
    shape = (recv.shape[0],) + (1,) * (recv.ndim - 2) + (recv.shape[-1],)
    others = valid.clone()
    others[b, target] = False
    others = others.reshape(shape).to(recv.dtype)
    n_other = others.sum(-1)
    r_s = _take_last(recv, target)
    mean_d = (recv * others).sum(-1) / n_other
    below = (recv < r_s[..., None]).to(recv.dtype) + 0.5 * (recv == r_s[..., None]).to(recv.dtype)
    percentile = (below * others).sum(-1) / n_other
    return torch.log2(r_s / mean_d), percentile


def _take_last(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (B, ..., E), index (B,) -> x[b, ..., index[b]] (B, ...)."""
    idx = index.reshape((-1,) + (1,) * (x.ndim - 1)).expand(*x.shape[:-1], 1)
    return torch.gather(x, -1, idx).squeeze(-1)


def measure_arrays(
    model: ProbedViT,
    stim: StimulusBatch,
    *,
    batch_size: int = 16,
    progress: Progress = None,
) -> dict[str, np.ndarray]:
    """Singleton-against-distractor attention and angles for every stimulus.

    Parameters
    ----------
    model : ProbedViT
    stim : StimulusBatch
        Arrays whose ``target`` is the singleton (or the designated element of a null).
    batch_size : int
        Stimuli per forward.
    progress : callable, optional
        Called with a line of text after each batch.

    Returns
    -------
    dict of numpy.ndarray
        ``log2_ratio``, ``percentile`` (N, layer, head, source) with source 0 the
        patch tokens and 1 the class token (NaN without one); ``log2_ratio_heads``,
        ``percentile_heads`` (N, layer, source) for the head-averaged attention;
        ``angle_singleton``, ``angle_distractors`` (N, layer) in degrees.
    """
    L, H, pre = model.n_layers, model.n_heads, model.arch.n_prefix
    cls = _cls_index(model)
    N = len(stim)
    out = {
        "log2_ratio": np.full((N, L, H, 2), np.nan),
        "percentile": np.full((N, L, H, 2), np.nan),
        "log2_ratio_heads": np.full((N, L, 2), np.nan),
        "percentile_heads": np.full((N, L, 2), np.nan),
        "angle_singleton": np.full((N, L), np.nan),
        "angle_distractors": np.full((N, L), np.nan),
    }
    sites = [f"blocks.{layer}.{kind}" for layer in range(L) for kind in ("ln1", "attn.pattern")]
    chunks = list(_batches(N, batch_size))
    pixel_batches = (pixels_of(model, stim.images[sl]) for sl in chunks)
    for sl, (_, cache) in zip(chunks, model.stream(pixel_batches, sites), strict=True):
        W = torch.from_numpy(stim.weights[sl]).double()  # (B, E, P)
        target = torch.from_numpy(stim.target[sl])
        valid = W.sum(-1) > 0
        Wn = _normalised(W)
        idx, mask = _footprints(W)
        for layer in range(L):
            A = cache[f"blocks.{layer}.attn.pattern"]
            sources = [_received_from_outside(A, pre, Wn, idx, mask)]
            if cls is not None:
                sources.append(torch.einsum("bhp,bep->bhe", A[:, :, cls, pre:].double(), Wn))
            for s, r in enumerate(sources):
                ratio, pct = _against_distractors(r, target, valid)
                out["log2_ratio"][sl, layer, :, s] = ratio.numpy()
                out["percentile"][sl, layer, :, s] = pct.numpy()
                ratio, pct = _against_distractors(r.mean(1), target, valid)
                out["log2_ratio_heads"][sl, layer, s] = ratio.numpy()
                out["percentile_heads"][sl, layer, s] = pct.numpy()
            x = cache[f"blocks.{layer}.ln1"][:, pre:].double()
            u = x / x.norm(dim=-1, keepdim=True)
            theta = torch.rad2deg(torch.arccos((u @ u.mT).clamp(-1.0, 1.0)))  # (B, P, P)
            el = Wn @ theta @ Wn.mT  # (B, E, E): mean angle between elements' tokens
            s_row = el[torch.arange(len(target)), target]  # (B, E)
            others = valid.clone()
            others[torch.arange(len(target)), target] = False
            o = others.double()
            out["angle_singleton"][sl, layer] = ((s_row * o).sum(-1) / o.sum(-1)).numpy()
            pair = o[:, :, None] * o[:, None, :]
            pair = pair * (1 - torch.eye(pair.shape[-1], dtype=pair.dtype))
            out["angle_distractors"][sl, layer] = ((el * pair).sum((-2, -1))
                                                   / pair.sum((-2, -1))).numpy()
        del cache
        if progress is not None:
            progress(f"salience arrays: {sl.stop}/{N} stimuli")
    return out


def measure_surround(
    model: ProbedViT,
    stim: StimulusBatch,
    surround: np.ndarray,
    *,
    batch_size: int = 16,
    progress: Progress = None,
) -> dict[str, np.ndarray]:
    """Centre responses and centre-to-surround attention for every stimulus.

    Parameters
    ----------
    model : ProbedViT
    stim : StimulusBatch
        Centre-surround stimuli; ``target`` is the centre element.
    surround : (N, E) bool
        The surround cells of each stimulus (grey ones included, for the ``none`` case).
    batch_size : int
    progress : callable, optional

    Returns
    -------
    dict of numpy.ndarray
        ``response`` (N, layer, sublayer, d_model) with sublayers ``attn.out``,
        ``mlp.out``; ``attention`` (N, layer, head): attention mass from the centre's
        tokens to the surround's.
    """
    L, H, D, pre = model.n_layers, model.n_heads, model.d_model, model.arch.n_prefix
    N = len(stim)
    out = {"response": np.full((N, L, 2, D), np.nan), "attention": np.full((N, L, H), np.nan)}
    sites = [f"blocks.{layer}.{kind}" for layer in range(L)
             for kind in ("attn.pattern", "attn.out", "mlp.out")]
    # the centre alone is the same image at every surround distance (only the surround
    # mask differs): each distinct image is forwarded once and read for all its stimuli
    first, which = _distinct(stim.images)
    chunks = list(_batches(len(first), batch_size))
    pixel_batches = (pixels_of(model, stim.images[first[sl]]) for sl in chunks)
    done = 0
    for sl, (_, cache) in zip(chunks, model.stream(pixel_batches, sites), strict=True):
        members = np.flatnonzero((which >= sl.start) & (which < sl.stop))
        image = torch.from_numpy(which[members] - sl.start)  # each stimulus's batch row
        W = torch.from_numpy(stim.weights[members]).double()
        b = torch.arange(W.shape[0])
        centre = _normalised(W)[b, torch.from_numpy(stim.target[members])]  # (B, P)
        # the centre's few tokens, padded: indices (B, K) and their weights (0 on padding)
        rows, _ = _footprints(centre[:, None])
        rows = rows[:, 0]
        w_rows = torch.gather(centre, 1, rows)
        mask = torch.from_numpy(surround[members]).double()  # (B, E)
        region = (mask[:, :, None] * W).sum(1).clamp(max=1.0)  # (B, P) surround tokens
        for layer in range(L):
            for s, kind in enumerate(("attn.out", "mlp.out")):
                x = cache[f"blocks.{layer}.{kind}"][image, pre:].double()
                out["response"][members, layer, s] = torch.einsum("bp,bpd->bd", centre,
                                                                  x).numpy()
            A = cache[f"blocks.{layer}.attn.pattern"]
            heads = torch.arange(A.shape[1])
            # (B, H, K, P): the centre's query rows of each stimulus's image
            A_rows = A[image[:, None, None], heads[None, :, None],
                       (rows + pre)[:, None, :]][..., pre:].double()
            mass = torch.einsum("bhkj,bj->bhk", A_rows, region)
            out["attention"][members, layer] = torch.einsum("bhk,bk->bh", mass,
                                                            w_rows).numpy()
        del cache
        done += len(members)
        if progress is not None:
            progress(f"salience centre-surround: {done}/{N} stimuli")
    return out


def attention_maps(model: ProbedViT, images: np.ndarray) -> np.ndarray:
    """Attention each patch receives, per layer: (N, layer, rows, cols).

    The attention pattern averaged over heads and over the patch-token queries (each
    query's row sums to 1 over all tokens, so a uniform map is 1 / n_tokens).
    """
    L, pre = model.n_layers, model.arch.n_prefix
    sites = [f"blocks.{layer}.attn.pattern" for layer in range(L)]
    _, cache = model.run_with_cache(pixels_of(model, images), sites)
    maps = [cache[s][:, :, pre:, pre:].double().mean((1, 2)) for s in sites]
    return torch.stack(maps, 1).reshape(len(images), L, *model.grid).numpy()
