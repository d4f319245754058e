"""Query-key factors of a transformer, in one layout for every front-end.

Convention (TransformerLens-style, as ``vitprobe.models.ProbedViT``): for layer l and
head h, ``q = LN(x) @ W_Q[l, h] + b_Q[l, h]`` and ``k = LN(y) @ W_K[l, h] + b_K[l, h]``
with ``W_Q, W_K`` of shape (layer, head, d_model, d_head), ``LN`` the normalisation that
precedes attention, ``LN(x) = ln_weight * (x - mean) / std + ln_bias``. The attention
logit is ``scale * q . k`` (``scale = d_head^-1/2`` in most models), so

    logit = scale * [ LN(x) W_Q W_K^T LN(y)^T          (the bilinear form M)
                      + LN(x) . (W_Q b_K)              (query only: cancels in softmax)
                      + LN(y) . (W_K b_Q)              (key only: shifts attention)
                      + b_Q . b_K ]                    (constant: cancels).

Options of :func:`effective_factors`:
- ``fold_ln``: write ``LN(x) = g * xhat + beta`` and fold g into both factors
  (``A = diag(g) W_Q``) so that M acts on the normalised token xhat, and beta into the
  biases (``b_Q' = b_Q + beta W_Q``). Pan et al. (2024) and the poster do not fold.
- ``scale``: include the logit scale in M (and in the bias terms).
Biases never enter M (as in Pan et al. 2024, arXiv 2405.14880); their terms are
reported separately.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from vitprobe.errors import InputShapeError, UnsupportedModelError

__all__ = ["QKFactors", "effective_factors", "factors_from_arrays", "factors_from_probed"]


def _np64(x: Any) -> np.ndarray | None:
    if x is None:
        return None
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().to("cpu").double().numpy()
    return np.asarray(x, dtype=np.float64)


@dataclass(frozen=True)
class QKFactors:
    """Query/key weights of every head, float64 numpy.

    Attributes
    ----------
    W_Q, W_K : (L, H, d, r)
        Factors such that ``q = LN(x) @ W_Q[l, h] + b_Q[l, h]``. For grouped-query
        attention W_K is already expanded to the H query heads (see ``kv_head``).
    b_Q, b_K : (L, H, r) or None
    ln_weight, ln_bias : (L, d) or None
        The normalisation before each layer's attention (RMSNorm: ln_bias None).
    scale : (L,)
        Logit scale per layer (``d_head^-1/2`` unless the model says otherwise).
    kv_head : (H,) int
        Index of the key head each query head reads (``arange(H)`` without GQA).
    spec, source, family : str
        Model spec, description of the weights, and architecture family.
    """

    W_Q: np.ndarray
    W_K: np.ndarray
    b_Q: np.ndarray | None = None
    b_K: np.ndarray | None = None
    ln_weight: np.ndarray | None = None
    ln_bias: np.ndarray | None = None
    scale: np.ndarray | None = None
    kv_head: np.ndarray | None = None
    spec: str = ""
    source: str = ""
    family: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.W_Q.ndim != 4 or self.W_Q.shape != self.W_K.shape:
            raise InputShapeError(
                f"W_Q and W_K must both be (layer, head, d_model, d_head); got "
                f"{self.W_Q.shape} and {self.W_K.shape}"
            )
        L, H, _, r = self.W_Q.shape
        if self.scale is None:
            object.__setattr__(self, "scale", np.full(L, r**-0.5))
        if self.kv_head is None:
            object.__setattr__(self, "kv_head", np.arange(H))

    @property
    def n_layers(self) -> int:
        return self.W_Q.shape[0]

    @property
    def n_heads(self) -> int:
        return self.W_Q.shape[1]

    @property
    def d_model(self) -> int:
        return self.W_Q.shape[2]

    @property
    def d_head(self) -> int:
        return self.W_Q.shape[3]


def factors_from_arrays(W_Q: Any, W_K: Any, **kwargs: Any) -> QKFactors:
    """Wrap plain arrays: (d, r), (H, d, r) or (L, H, d, r) factors (numpy or torch)."""
    q, k = _np64(W_Q), _np64(W_K)
    while q.ndim < 4:
        q, k = q[None], k[None]
    return QKFactors(
        q,
        k,
        **{
            key: _np64(v) if key.startswith(("b_", "ln_", "scale")) else v
            for key, v in kwargs.items()
        },
    )


def factors_from_probed(model: Any) -> QKFactors:
    """Factors from a ``vitprobe.models.ProbedViT`` (or anything with its attributes).

    Needs ``W_Q, W_K`` (L, H, d, r); uses ``b_Q, b_K, ln1_weight, ln1_bias, spec,
    source`` when present.
    """
    if not (hasattr(model, "W_Q") and hasattr(model, "W_K")):
        raise UnsupportedModelError(
            f"{type(model).__name__} has no W_Q/W_K attributes; pass a ProbedViT, a "
            "QKFactors, a Hugging Face / timm / torchvision transformer module, or arrays"
        )
    return QKFactors(
        W_Q=_np64(model.W_Q),
        W_K=_np64(model.W_K),
        b_Q=_np64(getattr(model, "b_Q", None)),
        b_K=_np64(getattr(model, "b_K", None)),
        ln_weight=_np64(getattr(model, "ln1_weight", None)),
        ln_bias=_np64(getattr(model, "ln1_bias", None)),
        spec=str(getattr(model, "spec", "") or ""),
        source=str(getattr(model, "source", "") or ""),
        family="vision",
    )


@dataclass(frozen=True)
class EffectiveFactors:
    """Factors after the analysis options: ``M = A B^T`` and the bias terms.

    A, B : (L, H, d, r); key_bias : (L, H, d) = ``scale * W_K b_Q'`` (dotted with the key
    token); query_bias : (L, H, d) = ``scale * W_Q b_K'``; const_bias : (L, H) =
    ``scale * b_Q' . b_K'``.
    """

    A: np.ndarray
    B: np.ndarray
    key_bias: np.ndarray
    query_bias: np.ndarray
    const_bias: np.ndarray


def effective_factors(
    f: QKFactors, *, fold_ln: bool = False, scale: bool = False
) -> EffectiveFactors:
    """Apply LayerNorm folding and the logit scale (see the module docstring)."""
    A, B = f.W_Q, f.W_K
    L, H, _, r = A.shape
    zeros = np.zeros((L, H, r))
    bq = zeros if f.b_Q is None else f.b_Q
    bk = zeros if f.b_K is None else f.b_K
    if fold_ln:
        if f.ln_weight is None:
            raise UnsupportedModelError(
                "fold_ln=True but the model exposes no normalisation before attention"
            )
        g = f.ln_weight[:, None, :, None]
        if f.ln_bias is not None:
            bq = bq + np.einsum("ld,lhdr->lhr", f.ln_bias, A)
            bk = bk + np.einsum("ld,lhdr->lhr", f.ln_bias, B)
        A, B = g * A, g * B
    c = f.scale[:, None] if scale else np.ones((L, 1))
    key_bias = c[..., None] * np.einsum("lhdr,lhr->lhd", B, bq)
    query_bias = c[..., None] * np.einsum("lhdr,lhr->lhd", A, bk)
    const_bias = c * np.einsum("lhr,lhr->lh", bq, bk)
    if scale:
        A = f.scale[:, None, None, None] * A
    return EffectiveFactors(A, B, key_bias, query_bias, const_bias)


def with_meta(f: QKFactors, **kwargs: Any) -> QKFactors:
    """Copy of ``f`` with some metadata fields replaced."""
    return replace(f, **kwargs)
