"""Query-key factors straight from a transformer ``nn.Module`` (text or vision; weights only).

Attention layouts recognised (walking ``model.named_modules()`` in order, one per layer):

- separate projections, ``nn.Linear`` stored [out, in]: ``query``/``key`` (BERT-style
  encoders: BertModel, RobertaModel, ...) or ``q_proj``/``k_proj`` (Llama, Qwen2,
  Mistral, Hugging Face ViT in transformers >= 5, ...). Grouped-query attention
  (``n_kv_heads < n_heads``): query head h reads key head ``h // (n_heads / n_kv_heads)``
  (Hugging Face ``repeat_kv``); W_K is expanded to the query heads and ``kv_head`` records
  the map.
- GPT-2's fused ``c_attn`` (``Conv1D`` stored [in, out] = (d, 3d), columns q | k | v,
  heads contiguous within each).
- timm's fused ``qkv`` ``nn.Linear`` ((3d, d), rows q | k | v) and torch's
  ``nn.MultiheadAttention`` ``in_proj_weight`` (torchvision ViT), same row order.

The normalisation that precedes attention is ``ln_1`` / ``input_layernorm`` /
``layernorm_before`` / ``norm1`` in pre-norm blocks; in post-norm BERT-style encoders
it is the previous layer's ``output.LayerNorm`` (the embeddings' LayerNorm for layer 0).
Cross-attention modules are skipped. Models with per-head query/key normalisation
(``q_norm``/``k_norm``, e.g. Qwen3) are refused: their logits are not a bilinear form of
the tokens. With rotary embeddings (Llama, Qwen2) M is the interaction at relative
offset 0. Gemma-style RMSNorm ``(1 + w)`` weights are not special-cased.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from vitprobe.errors import UnsupportedModelError
from vitprobe.weights.factors import QKFactors

__all__ = ["factors_from_module"]

_PRE_NORMS = ("ln_1", "input_layernorm", "layernorm_before", "norm1", "ln1", "attention_norm")


def _t(x: torch.Tensor | None) -> np.ndarray | None:
    return None if x is None else x.detach().to("cpu", torch.float64).numpy()


def _heads(w: np.ndarray, d_head: int) -> np.ndarray:
    """(d, n * d_head) [in, out] -> (n, d, d_head)."""
    d = w.shape[0]
    return w.reshape(d, -1, d_head).transpose(1, 0, 2)


def _bias_heads(b: np.ndarray | None, d_head: int) -> np.ndarray | None:
    return None if b is None else b.reshape(-1, d_head)


def _is_cross(name: str, module: nn.Module) -> bool:
    return bool(getattr(module, "is_cross_attention", False)) or any(
        key in name for key in ("crossattention", "encoder_attn", "cross_attn")
    )


def _config_heads(model: nn.Module) -> tuple[int | None, int | None]:
    cfg = getattr(model, "config", None)
    if cfg is None:
        return None, None
    n = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head", None)
    return n, getattr(cfg, "head_dim", None)


def _extract(name: str, m: nn.Module, model: nn.Module) -> dict[str, Any] | None:
    """Per-layer factors of one attention module, or None if ``m`` is not attention."""
    for attr in ("q_norm", "k_norm"):
        norm = getattr(m, attr, None)
        if isinstance(norm, nn.Module) and not isinstance(norm, nn.Identity):
            raise UnsupportedModelError(
                f"{name}: query/key normalisation ({attr}) makes attention logits "
                "non-bilinear; the query-key weight analysis does not apply"
            )
    # GPT-2 fused Conv1D [in, out]
    c_attn = getattr(m, "c_attn", None)
    if c_attn is not None and type(c_attn).__name__ == "Conv1D":
        w, b = _t(c_attn.weight), _t(c_attn.bias)
        d = w.shape[0]
        H = int(getattr(m, "num_heads", 0) or _config_heads(model)[0])
        r = d // H
        q, k = w[:, :d], w[:, d : 2 * d]
        scale = (
            float(getattr(m, "scaling", r**-0.5)) if getattr(m, "scale_attn_weights", True) else 1.0
        )
        if getattr(m, "scale_attn_by_inverse_layer_idx", False):
            scale /= float(getattr(m, "layer_idx", 0) or 0) + 1.0
        return dict(
            q=_heads(q, r),
            k=_heads(k, r),
            bq=None if b is None else _bias_heads(b[:d], r),
            bk=None if b is None else _bias_heads(b[d : 2 * d], r),
            scale=scale,
            family="fused-conv1d-qkv (GPT-2)",
        )
    # timm fused Linear [out, in] and nn.MultiheadAttention
    fused = None
    if isinstance(getattr(m, "qkv", None), nn.Linear):
        fused = (m.qkv.weight, m.qkv.bias, "fused-linear-qkv (timm)")
    elif isinstance(m, nn.MultiheadAttention):
        if not m._qkv_same_embed_dim:
            raise UnsupportedModelError(f"{name}: MultiheadAttention with kdim/vdim != embed_dim")
        fused = (m.in_proj_weight, m.in_proj_bias, "fused-linear-qkv (nn.MultiheadAttention)")
    if fused is not None:
        w, b = _t(fused[0]), _t(fused[1])
        d = w.shape[1]
        H = int(m.num_heads)
        r = int(getattr(m, "head_dim", 0) or d // H)
        bq = None if b is None else b[: H * r]
        bk = None if b is None else b[H * r : 2 * H * r]
        if getattr(m, "q_bias", None) is not None:  # BEiT-style separate q/v biases
            bq, bk = _t(m.q_bias), None
        return dict(
            q=_heads(w[: H * r].T, r),
            k=_heads(w[H * r : 2 * H * r].T, r),
            bq=_bias_heads(bq, r),
            bk=_bias_heads(bk, r),
            scale=float(getattr(m, "scale", r**-0.5)),
            family=fused[2],
        )
    # separate projections
    for qn, kn in (("query", "key"), ("q_proj", "k_proj")):
        ql, kl = getattr(m, qn, None), getattr(m, kn, None)
        if isinstance(ql, nn.Linear) and isinstance(kl, nn.Linear):
            n_cfg, r_cfg = _config_heads(model)
            r = int(
                getattr(m, "attention_head_size", 0)
                or getattr(m, "head_dim", 0)
                or r_cfg
                or ql.in_features
                // int(getattr(m, "num_attention_heads", 0) or getattr(m, "num_heads", 0) or n_cfg)
            )
            return dict(
                q=_heads(_t(ql.weight).T, r),
                k=_heads(_t(kl.weight).T, r),
                bq=_bias_heads(_t(ql.bias), r),
                bk=_bias_heads(_t(kl.bias), r),
                scale=float(getattr(m, "scaling", r**-0.5)),
                family="separate-qkv",
            )
    return None


def _block_name(name: str) -> str:
    parts = name.split(".")
    for i in range(len(parts) - 1, -1, -1):
        if parts[i].isdigit():
            return ".".join(parts[: i + 1])
    return ""


def _norm_of(module: nn.Module | None) -> tuple[np.ndarray, np.ndarray | None] | None:
    w = getattr(module, "weight", None)
    if module is None or w is None:
        return None
    return _t(w), _t(getattr(module, "bias", None))


def _pre_norm(model: nn.Module, attn_names: list[str], i: int) -> tuple | None:
    """The norm in front of layer i's attention: a pre-norm sibling of the attention
    module (or of one of its ancestors), else the post-norm of the block before."""
    parts = attn_names[i].split(".")
    for depth in range(len(parts) - 1, -1, -1):
        parent = model.get_submodule(".".join(parts[:depth]))
        for child in _PRE_NORMS:
            found = _norm_of(getattr(parent, child, None))
            if found is not None:
                return found
    # post-norm (BERT-style): the previous block's output LayerNorm, or the embeddings'
    if i > 0:
        prev = _block_name(attn_names[i - 1])
        if prev:
            out = getattr(getattr(model.get_submodule(prev), "output", None), "LayerNorm", None)
            return _norm_of(out)
        return None
    for name, mod in model.named_modules():
        if name.endswith(("embeddings.LayerNorm", "embeddings.layer_norm")):
            return _norm_of(mod)
    return None


def factors_from_module(model: nn.Module, *, spec: str = "") -> QKFactors:
    """Read every self-attention layer's query/key weights from a transformer module.

    Parameters
    ----------
    model : torch.nn.Module
        A Hugging Face text model (BertModel, GPT2Model, LlamaModel, Qwen2Model, ...,
        with or without a task head), a Hugging Face / timm / torchvision ViT.
    spec : str
        Stored as the factors' spec.

    Returns
    -------
    QKFactors
        (L, H, d, r) factors; K heads expanded for grouped-query attention.
    """
    layers: list[dict[str, Any]] = []
    names: list[str] = []
    for name, m in model.named_modules():
        if _is_cross(name, m):
            continue
        got = _extract(name, m, model)
        if got is not None:
            layers.append(got)
            names.append(name)
    if not layers:
        raise UnsupportedModelError(
            f"no self-attention layers with a recognised query/key layout in {type(model).__name__}"
        )
    shapes = {(x["q"].shape, x["k"].shape) for x in layers}
    if len(shapes) != 1:
        raise UnsupportedModelError(f"attention layers differ in shape: {sorted(shapes)}")
    H, _, r = layers[0]["q"].shape
    n_kv = layers[0]["k"].shape[0]
    if H % n_kv:
        raise UnsupportedModelError(f"{H} query heads cannot share {n_kv} key heads evenly")
    kv_head = np.arange(H) // (H // n_kv)

    def stack(key: str, expand: bool = False) -> np.ndarray | None:
        vals = [x[key] for x in layers]
        if any(v is None for v in vals):
            return None
        out = np.stack(vals)
        return out[:, kv_head] if expand else out

    norms = [_pre_norm(model, names, i) for i in range(len(layers))]
    ln_w = np.stack([n[0] for n in norms]) if all(n is not None for n in norms) else None
    ln_b = None
    if ln_w is not None and all(n[1] is not None for n in norms):
        ln_b = np.stack([n[1] for n in norms])
    family = layers[0]["family"] + (f", GQA {H} query / {n_kv} key heads" if n_kv < H else "")
    bq = stack("bq")
    bk = stack("bk", expand=True)
    if (bq is None) != (bk is None):  # one side has biases: the other is zero
        bq = np.zeros((len(layers), H, r)) if bq is None else bq
        bk = np.zeros((len(layers), H, r)) if bk is None else bk
    cfg = getattr(model, "config", None)
    name_or_path = str(getattr(cfg, "_name_or_path", "") or "") if cfg is not None else ""
    return QKFactors(
        W_Q=stack("q"),
        W_K=stack("k", expand=True),
        b_Q=bq,
        b_K=bk,
        ln_weight=ln_w,
        ln_bias=ln_b,
        scale=np.array([x["scale"] for x in layers], dtype=np.float64),
        kv_head=kv_head,
        spec=spec or name_or_path,
        source=f"{type(model).__name__} module weights"
        + (f" ({name_or_path})" if name_or_path else ""),
        family=family,
    )
