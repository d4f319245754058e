"""Eigen-stimuli: patches whose ``ln1`` tokens align with a head's query-key modes.

For head h of layer l, two tokens x (query) and y (key) interact through
``x M y^T`` with ``M = W_Q W_K^T = M_sym + M_asym`` (the poster's decomposition;
spectra from :func:`vitprobe.weights.qk_spectra`). The poster's future work asks for
"well-chosen stimuli that align closely with the eigenvectors". Targets per head:

=========  ===========================  ======================================
pair       query / key aligned with     weight-level prediction of x M y^T
=========  ===========================  ======================================
``sym+``   v+ / v+ (top positive        ``mu+ |x||y|`` > 0: similar patches attract
           eigenvector of M_sym)
``sym-``   v- / v- (most negative)      ``mu- |x||y|`` < 0: similar patches repel
``asym+``  b / a (leading plane of      ``+lambda |x||y|`` (M_asym a = lambda b)
           M_asym)
``asym-``  a / b (the same patches,     ``-lambda |x||y|``: the plane is directional
           roles swapped)
``random`` r1 / r2 (random unit         the matched control: same search, no mode
           directions)
=========  ===========================  ======================================

**Reachable modes.** A patch cannot put its token anywhere: bounded pixels move the
token only along the directions its patch embedding (and, deeper, the layers before l)
gives gain to. On the trained DINOv2-S/14 the top modes of the whole d-dimensional form
lie almost entirely outside those directions (cosine < 0.1 with the reachable ones in
most heads of layer 1: a bounded patch reaches them with cosine 0.3-0.7 at best, which
no optimiser changes). So the targets are the modes of the form *compressed* onto the
reachable subspace ``U`` (:func:`reachable_basis`: the top left singular vectors of the
Jacobian of a patch's token with respect to its own pixels, those with at least
``gain`` times the largest singular value): the eigenvectors of ``U^T M_sym U`` and the
leading plane of ``U^T M_asym U``, mapped back by ``U``. Their eigenvalues, the full
form's, and the overlap of each reachable mode with the full one are saved beside them,
so the report says how much of a head's strongest mode any patch can reach.

Alignment is measured for the token's difference from the image's mean patch token (the
part of a key that the softmax sees: a constant added to every key shifts all of a
query's logits equally), the same reference for both routes.

Two routes find such patches:

* **optimised**: the pixels of the target patches (projected Adam, bounded in [0, 1];
  the rest of a fixed context image untouched) are optimised to maximise the cosine of
  their centred ``ln1`` tokens with the targets, by autograd through the model's patch
  embedding and layers < l (the forward stops at ``ln1`` of layer l); the search stops
  early once every cosine reaches ``stop_at``.
  Every target of every head of the layer sits in one image at its own slot (pairs two
  patches apart), so one forward and backward per step serves all heads; where the
  grid holds too few slots the targets spread over several images.
* **real**: the patches of real photographs (the built-in demo images) best aligned
  with each target, pairs taken within one image.

Then one recorded forward measures, per head and pair, the cosines reached, the logit
``scale q.k`` of the pair (from the recorded scores, biases included), its prediction
``scale x M y^T`` from the recorded tokens, the logit advantage over the query's mean
logit, and the attention relative to uniform (``A[q, k] * n_keys``). The
``predicted_share`` of a head is ``1 - sum (S_c - P_c)^2 / sum S_c^2`` over all
patch-patch pairs of the images, with ``S_c`` the measured logits and ``P_c`` the
predictions, each centred per query (the softmax ignores per-query constants): the
share of the token-level logit variance that the weight-level form predicts (what is
left is the key-bias term ``b_Q W_K^T y``; the share is negative where that term
outweighs and opposes the pair term), with the correlation beside it.

**Reproducibility.** The optimised route is a non-convex search: the same seed and the
same number of CPU threads give the same patches bit for bit, but another thread count
(another summation order in the forward and backward) can lead a pair to another
optimum. On DINOv2-S/14, layer 1, 1 against 2 threads: single pairs' logits differed by
up to 15 (of up to 380) and their attention by up to 137 (x uniform, of up to 256),
while the head-level summaries the report states moved by at most 0.015
(``predicted_share``) and 0.008 (``predicted_corr``). Read single pairs as examples and
the medians and ranges over heads as the result.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
import xarray as xr

from vitprobe.data.transforms import normalize
from vitprobe.models import ProbedViT

__all__ = ["PAIRS", "eigen_dataset", "eigen_targets", "reachable_basis", "search_patches"]

PAIRS = ("sym+", "sym-", "asym+", "asym-", "random")
#: the image pairs optimised per head (asym+ and asym- share one pair of patches)
_SEARCH = ("sym+", "sym-", "asym", "random")

Progress = Callable[[str], None] | None


class _Stop(Exception):
    """Raised by the hook on ``ln1`` of the target layer: the rest of the forward is not needed."""


def eigen_targets(
    model: ProbedViT, layer: int, seed: int = 0, basis: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Target directions (unit, d_model) for every head of ``layer``, in normalised-token space.

    The modes are those of the LayerNorm-folded form ``M^ = diag(g) W_Q W_K^T diag(g)``
    (:func:`vitprobe.weights.effective_factors` with ``fold_ln=True``), which acts on
    the normalised token ``x^ = (ln1(x) - beta) / g``: every ``ln1`` output is
    ``g * x^ + beta``, and ``x^ M^ y^^T`` is exactly the part of the logit that depends
    on both tokens.

    Parameters
    ----------
    basis : (d, k) array with orthonormal columns, optional
        Compress the form onto this subspace first (``U^T M^ U``; see
        :func:`reachable_basis`): the targets are then the modes within it. None: the
        modes of the whole form.

    Returns
    -------
    dict
        ``query`` and ``key`` (H, 4, d): the targets of the searched pairs
        (sym+, sym-, asym (query a, key b), random: the same two random unit directions
        in the subspace for every head); ``values`` (H, 3): mu+, mu- and lambda of the
        leading plane of the (compressed) form; ``M`` (H, d, d) the folded forms
        (float64); with a basis also ``full_values`` (H, 3), the same of the whole form,
        and ``overlap`` (H, 3): |cosine| of each compressed mode with the whole form's
        (for the plane: the norm of the projection of ``a`` onto the whole form's plane).
    """
    from vitprobe.weights import effective_factors, factors_from_probed

    folded = effective_factors(factors_from_probed(model), fold_ln=True)
    A, B = folded.A[layer], folded.B[layer]  # (H, d, r)
    H, d = model.n_heads, model.d_model
    U = np.eye(d) if basis is None else np.asarray(basis, dtype=np.float64)
    if U.ndim != 2 or U.shape[0] != d:
        raise ValueError(f"basis must be (d_model={d}, k), got {U.shape}")
    modes = _modes(np.einsum("dk,hdr->hkr", U, A), np.einsum("dk,hdr->hkr", U, B))
    plus, minus, a, b = (v @ U.T for v in modes["vectors"])  # (H, k) -> (H, d)
    rng = np.random.default_rng([seed, layer])
    rand = rng.standard_normal((2, U.shape[1])) @ U.T
    if basis is None:
        rand -= rand.mean(axis=1, keepdims=True)  # normalised tokens have mean 0
    rand /= np.linalg.norm(rand, axis=-1, keepdims=True)
    query = np.stack([plus, minus, a, np.broadcast_to(rand[0], (H, d))], axis=1)
    key = np.stack([plus, minus, b, np.broadcast_to(rand[1], (H, d))], axis=1)
    out = {"query": query, "key": key, "values": modes["values"],
           "M": np.einsum("hdr,her->hde", A, B)}
    if basis is not None:
        full = _modes(A, B)
        fp, fm, fa, fb = full["vectors"]
        plane = np.sqrt(np.einsum("hd,hd->h", a, fa) ** 2 + np.einsum("hd,hd->h", a, fb) ** 2)
        out["full_values"] = full["values"]
        out["overlap"] = np.stack([np.abs(np.einsum("hd,hd->h", plus, fp)),
                                   np.abs(np.einsum("hd,hd->h", minus, fm)), plane], axis=1)
    return out


def _modes(A: np.ndarray, B: np.ndarray) -> dict:
    """Top sym+/sym- eigenvectors and the leading asym plane of ``M = A B^T`` per head.

    Dense on the (k, k) form: eigh of ``M_sym``, and the top singular pair of ``M_asym``
    (antisymmetric, so ``M_asym a = lambda b`` with ``a`` orthogonal to ``b``).
    """
    M = np.einsum("hkr,hjr->hkj", A, B)
    sym = 0.5 * (M + M.transpose(0, 2, 1))
    asym = 0.5 * (M - M.transpose(0, 2, 1))
    vals, vecs = np.linalg.eigh(sym)  # ascending
    u, sv, vt = np.linalg.svd(asym)
    values = np.stack([vals[:, -1], vals[:, 0], sv[:, 0]], axis=1)
    return {"vectors": (vecs[:, :, -1], vecs[:, :, 0], vt[:, 0], u[:, :, 0]), "values": values}


def reachable_basis(model: ProbedViT, layer: int, context: np.ndarray, *,
                    gain: float = 0.25) -> np.ndarray:
    """The token directions a patch's own pixels can move its ``ln1`` token in, (d, k).

    The Jacobian ``J`` (d x 3 p^2) of the normalised ``ln1`` token of the patch at the
    centre of the grid, minus the image's mean patch token, with respect to that patch's
    pixels (in [0, 1] units), at ``context``; the basis is its left singular vectors
    whose singular value is at least ``gain`` times the largest (bounded pixels move the
    token by at most about the singular value along each). One backward pass per
    direction of ``d``: about 2 s for layer 1 and 30 s for layer 6 of a ViT-S on 2 CPU
    cores.
    """
    if not 0.0 < gain <= 1.0:
        raise ValueError(f"gain must be in (0, 1], got {gain}")
    p = model.patch_size
    rows, cols = model.grid
    r, c = rows // 2, cols // 2
    ctx = torch.from_numpy(np.asarray(context, dtype=np.float32))
    patch = ctx[r * p:(r + 1) * p, c * p:(c + 1) * p].clone().requires_grad_(True)
    with _frozen(model), torch.enable_grad():
        image = _paste(ctx[None], patch[None], np.array([[0, r, c]]), p)
        x = _centred_tokens(model, image, layer)[0, r * cols + c]
        J = torch.stack([torch.autograd.grad(x[i], patch, retain_graph=i < len(x) - 1)[0]
                         .reshape(-1) for i in range(len(x))])
    U, S, _ = torch.linalg.svd(J.double(), full_matrices=False)
    keep = int((S >= gain * S[0]).sum())
    return U[:, :keep].numpy()


class _frozen:
    """Context manager: the model's parameters need no gradient inside (pixels only)."""

    def __init__(self, model: ProbedViT) -> None:
        self.params = [q for q in model.model.parameters() if q.requires_grad]

    def __enter__(self) -> None:
        for q in self.params:
            q.requires_grad_(False)

    def __exit__(self, *exc: object) -> None:
        for q in self.params:
            q.requires_grad_(True)


def normalised_tokens(model: ProbedViT, ln1: torch.Tensor, layer: int) -> torch.Tensor:
    """``x^ = (ln1(x) - beta) / g``: the tokens the folded form acts on."""
    g = model.ln1_weight[layer].to(ln1.dtype)
    beta = model.ln1_bias[layer].to(ln1.dtype)
    return (ln1 - beta) / g


def _slots(grid: tuple[int, int]) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Patch (row, col) pairs for query and key, two patches apart, one patch of margin."""
    rows, cols = grid
    out = []
    for r in range(1, rows - 1, 2):
        for c in range(1, cols - 3, 4):
            out.append(((r, c), (r, c + 2)))
    if not out:
        out = [((0, 0), (0, min(2, cols - 1)))]
    return out


def _ln1_tokens(model: ProbedViT, pixels: torch.Tensor, layer: int) -> torch.Tensor:
    """``ln1`` output of ``layer`` (B, T, d) with autograd, the forward cut just after it."""
    box: list[torch.Tensor] = []

    def hook(module, args, output):
        box.append(output[0] if isinstance(output, tuple) else output)
        raise _Stop

    handle = model.adapter.ln1(layer).register_forward_hook(hook)
    try:
        model.adapter.forward(pixels)
    except _Stop:
        pass
    finally:
        handle.remove()
    return box[0]


def search_patches(
    model: ProbedViT,
    layer: int,
    query: np.ndarray,
    key: np.ndarray,
    context: np.ndarray,
    *,
    steps: int = 300,
    lr: float = 0.05,
    stop_at: float | None = 0.95,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Optimise patch pixels so that their ``ln1`` tokens align with target directions.

    The objective is the sum over patches of the cosine between the patch's normalised
    ``ln1`` token minus its image's mean patch token and its target; projected Adam on the
    pixels (clipped to [0, 1] after every step).

    Parameters
    ----------
    model : ProbedViT
    layer : int
        The layer whose ``ln1`` tokens are aligned (0-based).
    query, key : (n_pairs, d) arrays
        Unit target directions of each pair's query and key patch.
    context : (H, W, 3) float array in [0, 1]
        The fixed image the patches are pasted into.
    steps, lr : int, float
        The most Adam steps, and the learning rate (pixel units).
    stop_at : float or None
        Stop as soon as every cosine reaches this; None: run all ``steps``.
    seed : int
        Seeds the starting pixels (the context plus small noise).

    Returns
    -------
    dict
        ``images`` (n_images, H, W, 3) float32: the final stimuli; ``where`` (n_pairs,
        5) int: image index, query (row, col), key (row, col); ``cosine`` (n_pairs, 2)
        float: cosine of the query's and key's centred tokens with their targets, in the
        final images; ``patches`` (n_pairs, 2, p, p, 3); ``steps`` (int): steps taken.
    """
    p = model.patch_size
    slots = _slots(model.grid)
    n_pairs = len(query)
    n_images = -(-n_pairs // len(slots))
    where = np.array([(i // len(slots), *slots[i % len(slots)][0], *slots[i % len(slots)][1])
                      for i in range(n_pairs)], dtype=np.int64).reshape(n_pairs, 5)
    # the patch rows/cols each optimised patch occupies, in pair order: query then key
    spots = np.concatenate([where[:, [0, 1, 2]], where[:, [0, 3, 4]]])  # (2n, 3)
    targets = torch.from_numpy(np.concatenate([query, key])).float()
    token = model.arch.n_prefix + spots[:, 1] * model.grid[1] + spots[:, 2]
    ctx = torch.from_numpy(np.asarray(context, dtype=np.float32))
    start = torch.stack([ctx[r * p:(r + 1) * p, c * p:(c + 1) * p] for _, r, c in spots])
    g = torch.Generator().manual_seed(seed)
    pixels = (start + 0.02 * torch.randn(start.shape, generator=g)).clamp(0.0, 1.0)
    pixels.requires_grad_(True)
    base = ctx.expand(n_images, *ctx.shape).clone()

    def cosines(patch_pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = _paste(base, patch_pixels, spots, p)
        tokens = _centred_tokens(model, images, layer)
        return images, torch.nn.functional.cosine_similarity(
            tokens[spots[:, 0], token - model.arch.n_prefix], targets, dim=-1)

    opt = torch.optim.Adam([pixels], lr=lr)
    taken = 0
    with _frozen(model), torch.enable_grad():
        for taken in range(steps):  # noqa: B007 (the count is returned)
            _, cos = cosines(pixels)
            if stop_at is not None and float(cos.detach().min()) >= stop_at:
                break
            opt.zero_grad()
            (-cos.sum()).backward()
            opt.step()
            with torch.no_grad():
                pixels.clamp_(0.0, 1.0)
        else:
            taken = steps
    with torch.no_grad():  # the cosines of the final images, not of the last step's
        images, cos = cosines(pixels)
    patches = pixels.detach().numpy().reshape(2, n_pairs, p, p, 3).transpose(1, 0, 2, 3, 4)
    return {"images": images.numpy(), "where": where, "steps": taken,
            "cosine": cos.numpy().reshape(2, n_pairs).T, "patches": patches}


def _centred_tokens(model: ProbedViT, images: torch.Tensor, layer: int) -> torch.Tensor:
    """(N, P, d) normalised ``ln1`` patch tokens of ``layer`` minus each image's mean one."""
    pre = model.arch.n_prefix
    tokens = normalised_tokens(
        model, _ln1_tokens(model, normalize(images, model.preprocess), layer), layer)[:, pre:]
    return tokens - tokens.mean(1, keepdim=True)


def _paste(base: torch.Tensor, pixels: torch.Tensor, spots: np.ndarray, p: int) -> torch.Tensor:
    """Images (N, H, W, 3) with ``pixels`` (n, p, p, 3) at patch ``spots`` (n, 3): image,
    row, col (one indexed write on the patch view, so autograd sees one op)."""
    n, height, width, _ = base.shape
    rows, cols = height // p, width // p
    grid = base.reshape(n, rows, p, cols, p, 3).permute(0, 1, 3, 2, 4, 5).clone()
    index = tuple(torch.from_numpy(spots[:, i]) for i in range(3))
    grid = grid.index_put(index, pixels)
    return grid.permute(0, 1, 3, 2, 4, 5).reshape(n, height, width, 3)


def _demo_pixels(model: ProbedViT, n_images: int) -> tuple[torch.Tensor, np.ndarray]:
    """(n, 3, H, W) normalised pixels and (n, H, W, 3) [0, 1] images of demo crops."""
    from vitprobe.data import make_loader, open_images

    source = open_images("demo", n_images=n_images, seed=0)
    pixels = torch.cat([b["pixels"] for b in make_loader(source, model.preprocess,
                                                          batch_size=n_images)])
    mean = torch.tensor(model.preprocess.mean)[:, None, None]
    std = torch.tensor(model.preprocess.std)[:, None, None]
    images = (pixels * std + mean).permute(0, 2, 3, 1).clamp(0, 1).numpy()
    return pixels, images


def _record(model: ProbedViT, images: np.ndarray, layer: int) -> dict[str, torch.Tensor]:
    sites = [f"blocks.{layer}.{k}" for k in ("ln1", "attn.scores", "attn.pattern")]
    _, cache = model.run_with_cache(normalize(images, model.preprocess), sites)
    pre = model.arch.n_prefix
    return {"x": normalised_tokens(model, cache[sites[0]][:, pre:].double(), layer),
            "scores": cache[sites[1]][:, :, pre:, pre:].double(),
            "pattern": cache[sites[2]][:, :, pre:, pre:].double()}


def _pair_measures(rec: dict[str, torch.Tensor], M: torch.Tensor, scale: float, head: int,
                   image: int, q: int, k: int, ref: torch.Tensor) -> dict[str, float]:
    """Logit, its predictions, logit advantage and attention x n_keys of query q -> key k.

    ``ref`` (P, d): the tokens the alignment is measured from (context or image mean).
    """
    x = rec["x"][image]
    s = rec["scores"][image, head, q]
    dq, dk = x[q] - ref[q], x[k] - ref[k]
    return {"logit": float(s[k]), "logit_pred": float(scale * x[q] @ M @ x[k]),
            "logit_pred_change": float(scale * dq @ M @ dk),
            "logit_adv": float(s[k] - s.mean()),
            "attention": float(rec["pattern"][image, head, q, k] * s.numel())}


def _predicted_share(rec: dict[str, torch.Tensor], M: torch.Tensor, scale: float,
                     head: int) -> tuple[float, float]:
    """(1 - SSE / SS, correlation) of per-query-centred logits and their prediction."""
    S = rec["scores"][:, head]
    P = scale * rec["x"] @ M @ rec["x"].mT
    Sc, Pc = S - S.mean(-1, keepdim=True), P - P.mean(-1, keepdim=True)
    share = 1.0 - ((Sc - Pc) ** 2).sum() / (Sc**2).sum()
    corr = (Sc * Pc).sum() / torch.sqrt((Sc**2).sum() * (Pc**2).sum())
    return float(share), float(corr)


def _cos(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(x, v, dim=-1)


def eigen_dataset(
    model: ProbedViT,
    layers: tuple[int, ...],
    *,
    steps: int = 300,
    n_images: int = 8,
    gain: float = 0.25,
    progress: Progress = None,
) -> xr.Dataset:
    """Eigen-stimuli of every head of ``layers`` by both routes, and their attention.

    Parameters
    ----------
    layers : tuple of int
        0-based layers whose heads get eigen-stimuli.
    steps : int
        The most Adam steps of the pixel search (it stops once every cosine is 0.95).
    n_images : int
        Demo photos of the real route (the first is the optimised route's context).
    gain : float
        :func:`reachable_basis`'s threshold: the subspace the targets are taken in.

    Returns
    -------
    xarray.Dataset
        Dims ``eigen_layer``, ``route`` (optimised, real), ``head``, ``pair``
        (:data:`PAIRS`), ``role`` (query, key), ``mode`` (mu+, mu-, lambda):
        ``eigen_cosine`` (alignment reached: of the token minus its image's mean patch
        token), ``eigen_logit``, ``eigen_logit_pred``, ``eigen_logit_adv``,
        ``eigen_attention``, ``eigen_predicted_share`` (eigen_layer, route, head),
        ``eigen_value`` and ``eigen_value_full`` (the reachable and the whole form's
        modes), ``eigen_mode_overlap``, ``eigen_reachable_rank``, ``eigen_patch``
        (pixels of each pair's patches), ``eigen_search_s`` and ``eigen_search_steps``.
    """
    H, p = model.n_heads, model.patch_size
    scale = float(model.arch.attn_scale)
    _pixels_real, real_images = _demo_pixels(model, n_images)
    context = real_images[0]
    shape = (len(layers), 2, H, len(PAIRS))
    out = {name: np.full(shape, np.nan) for name in
           ("logit", "logit_pred", "logit_pred_change", "logit_adv", "attention")}
    cosine = np.full((*shape, 2), np.nan)
    share = np.full((len(layers), 2, H), np.nan)
    corr = np.full((len(layers), 2, H), np.nan)
    values = np.full((len(layers), H, 3), np.nan)
    full_values = np.full((len(layers), H, 3), np.nan)
    overlap = np.full((len(layers), H, 3), np.nan)
    rank = np.zeros(len(layers), dtype=np.int64)
    search_steps = np.zeros(len(layers), dtype=np.int64)
    patches = np.full((len(layers), 2, H, len(_SEARCH), 2, p, p, 3), np.nan, dtype=np.float32)
    search_s = np.zeros(len(layers))
    cols = model.grid[1]
    for li, layer in enumerate(layers):
        t0 = time.perf_counter()
        basis = reachable_basis(model, layer, context, gain=gain)
        t = eigen_targets(model, layer, basis=basis)
        rank[li] = basis.shape[1]
        values[li], full_values[li], overlap[li] = t["values"], t["full_values"], t["overlap"]
        M = torch.from_numpy(t["M"])
        # -- optimised: one pair per (head, sym+, sym-, asym), one random pair for all heads
        q = np.concatenate([t["query"][:, :3].reshape(-1, model.d_model), t["query"][:1, 3]])
        k = np.concatenate([t["key"][:, :3].reshape(-1, model.d_model), t["key"][:1, 3]])
        found = search_patches(model, layer, q, k, context, steps=steps)
        search_s[li] = time.perf_counter() - t0
        search_steps[li] = found["steps"]
        if progress is not None:
            progress(f"salience eigen-stimuli: layer {layer + 1} searched in {search_s[li]:.0f} s")
        rec = _record(model, found["images"], layer)
        image_means = rec["x"].mean(1)  # (n_images, d): the reference of the cosines
        where = found["where"]
        for h in range(H):
            share[li, 0, h], corr[li, 0, h] = _predicted_share(rec, M[h], scale, h)
            for j, name in enumerate(_SEARCH):
                i = h * 3 + j if name != "random" else 3 * H
                img, qi, ki = where[i, 0], where[i, 1] * cols + where[i, 2], \
                    where[i, 3] * cols + where[i, 4]
                tq, tk = torch.from_numpy(q[i]), torch.from_numpy(k[i])
                ref = image_means[img].expand_as(rec["x"][img])
                cq = float(_cos(rec["x"][img, qi] - ref[qi], tq))
                ck = float(_cos(rec["x"][img, ki] - ref[ki], tk))
                patches[li, 0, h, j] = found["patches"][i]
                directions = ((PAIRS.index("asym-"), qi, ki, cq, ck),
                              (PAIRS.index("asym+"), ki, qi, ck, cq)) if name == "asym" else \
                    ((PAIRS.index(name), qi, ki, cq, ck),)
                for pi, a, b, ca, cb in directions:
                    for key, v in _pair_measures(rec, M[h], scale, h, img, a, b, ref).items():
                        out[key][li, 0, h, pi] = v
                    cosine[li, 0, h, pi] = (ca, cb)
        # -- real patches: per image the best-aligned patches, pairs within one image
        rec = _record(model, real_images, layer)
        means = rec["x"].mean(1, keepdim=True).expand_as(rec["x"])
        x = rec["x"] - means
        for h in range(H):
            share[li, 1, h], corr[li, 1, h] = _predicted_share(rec, M[h], scale, h)
            for j, name in enumerate(_SEARCH):
                tq = torch.from_numpy(t["query"][h, j])
                tk = torch.from_numpy(t["key"][h, j])
                cq_all, ck_all = _cos(x, tq), _cos(x, tk)  # (n, P)
                qi = cq_all.argmax(1)
                ck_all[torch.arange(len(qi)), qi] = -2.0  # a different patch for the key
                ki = ck_all.argmax(1)
                best = int(torch.argmax(cq_all.max(1).values))
                for role, idx in enumerate((qi, ki)):
                    r_, c_ = divmod(int(idx[best]), cols)
                    patches[li, 1, h, j, role] = real_images[best, r_ * p:(r_ + 1) * p,
                                                             c_ * p:(c_ + 1) * p]
                cq = float(cq_all.max(1).values.mean())
                ck = float(torch.gather(ck_all, 1, ki[:, None]).mean())
                directions = ((PAIRS.index("asym-"), qi, ki, cq, ck),
                              (PAIRS.index("asym+"), ki, qi, ck, cq)) if name == "asym" else \
                    ((PAIRS.index(name), qi, ki, cq, ck),)
                for pi, a, b, ca, cb in directions:
                    per = [_pair_measures(rec, M[h], scale, h, n, int(a[n]), int(b[n]),
                                          means[n]) for n in range(len(a))]
                    for key in out:
                        out[key][li, 1, h, pi] = float(np.mean([m[key] for m in per]))
                    cosine[li, 1, h, pi] = (ca, cb)
    dims = ("eigen_layer", "route", "head", "pair")
    ds = xr.Dataset(
        {
            "eigen_cosine": ((*dims, "role"), cosine, {
                "long_name": "cosine of the patch's normalised token with its target mode "
                "(optimised: its change from the context's token; real: minus the image's "
                "mean patch token; real values are means over images)"}),
            "eigen_logit": (dims, out["logit"], {"long_name": "measured logit scale q.k"}),
            "eigen_logit_pred": (dims, out["logit_pred"], {
                "long_name": "weight-level prediction scale x^ M^ y^^T (LN folded)"}),
            "eigen_logit_pred_change": (dims, out["logit_pred_change"], {
                "long_name": "prediction from the aligned parts alone: scale dx^ M^ dy^^T with "
                "d the change from the reference tokens the cosine is measured from"}),
            "eigen_logit_adv": (dims, out["logit_adv"], {
                "long_name": "logit minus the query's mean logit over patch keys"}),
            "eigen_attention": (dims, out["attention"], {
                "long_name": "attention from query to key patch x number of patch keys "
                "(1: uniform)"}),
            "eigen_predicted_share": (("eigen_layer", "route", "head"), share, {
                "long_name": "share of the per-query-centred logit variance over all patch "
                "pairs predicted by x^ M^ y^^T"}),
            "eigen_predicted_corr": (("eigen_layer", "route", "head"), corr, {
                "long_name": "correlation of per-query-centred logits with x^ M^ y^^T over all "
                "patch pairs"}),
            "eigen_value": (("eigen_layer", "head", "mode"), values, {
                "long_name": "mu+, mu- of the folded M_sym and lambda of its leading "
                "antisymmetric plane, compressed onto the patch-reachable subspace"}),
            "eigen_value_full": (("eigen_layer", "head", "mode"), full_values, {
                "long_name": "mu+, mu- and lambda of the whole folded form"}),
            "eigen_mode_overlap": (("eigen_layer", "head", "mode"), overlap, {
                "long_name": "|cosine| of each reachable mode with the whole form's (plane: "
                "norm of the projection of a onto the whole form's leading plane)"}),
            "eigen_reachable_rank": (("eigen_layer",), rank, {
                "long_name": "dimension of the patch-reachable subspace (Jacobian singular "
                "values >= gain x the largest)"}),
            "eigen_patch": (("eigen_layer", "route", "head", "search_pair", "role", "patch_y",
                             "patch_x", "rgb"), patches, {"long_name": "patch pixels in [0, 1]"}),
            "eigen_search_s": (("eigen_layer",), search_s, {
                "long_name": "time of the reachable basis and the pixel search, all heads of "
                "the layer", "units": "s"}),
            "eigen_search_steps": (("eigen_layer",), search_steps, {
                "long_name": "Adam steps the pixel search took"}),
        },
        coords={"eigen_layer": list(layers), "route": ["optimised", "real"],
                "pair": list(PAIRS), "role": ["query", "key"], "mode": ["mu+", "mu-", "lambda"],
                "search_pair": list(_SEARCH)},
    )
    ds.attrs["eigen_steps"] = steps
    ds.attrs["eigen_gain"] = gain
    ds.attrs["eigen_images"] = n_images
    return ds
