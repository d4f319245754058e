"""Hooks that hand recorded activations out batch by batch, without touching outputs.

Attention probabilities are recomputed from the q and k that the model's own
attention consumed (captured by hooks on its projections), in float32, so they
are exact whatever kernel the model runs (fused ``scaled_dot_product_attention``
in timm, HF ``sdpa``, torchvision's ``need_weights=False``). Every hook only
reads; none returns a value, so the model's outputs are unchanged bit for bit.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch

from vitprobe.record.sites import QKV_KINDS, parse_site, resolve_sites, site_name

if TYPE_CHECKING:
    from vitprobe.models.base import ProbedViT


class Recorder:
    """Context manager that records ``sites`` on every forward of ``model``.

    >>> with Recorder(model, "blocks.*.attn.pattern") as rec:  # doctest: +SKIP
    ...     model(pixels)
    ...     cache = rec.pop()          # {"blocks.0.attn.pattern": (B, H, T, T), ...}
    """

    def __init__(
        self,
        model: ProbedViT,
        sites: str | Iterable[str],
        *,
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
    ):
        self.model = model
        self.sites = resolve_sites(sites, model.arch.n_layers)
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else None
        self._cache: dict[str, torch.Tensor] = {}
        self._qkv: dict[int, dict[str, torch.Tensor]] = defaultdict(dict)
        self._handles: list[Any] = []
        self._scratch: torch.Tensor | None = None

    # -- storing --------------------------------------------------------------
    def _store(self, name: str, tensor: torch.Tensor) -> None:
        tensor = tensor.detach()
        if self.dtype is not None or self.device is not None:
            tensor = tensor.to(
                device=self.device or tensor.device, dtype=self.dtype or tensor.dtype
            )
        self._cache[name] = tensor

    def pop(self) -> dict[str, torch.Tensor]:
        """Return what the last forward recorded (in model order) and forget it."""
        cache = {s: self._cache[s] for s in self.sites if s in self._cache}
        self._cache = {}
        self._qkv.clear()
        return cache

    def _scores_buffer(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """A float32 (B, H, T_q, T_k) scratch for logits that are not recorded."""
        shape = (*q.shape[:-1], k.shape[-2])
        n = math.prod(shape)
        buf = self._scratch
        if buf is None or buf.device != q.device or buf.numel() < n:
            buf = self._scratch = torch.empty(n, dtype=torch.float32, device=q.device)
        return buf[:n].view(shape)

    # -- hooks ----------------------------------------------------------------
    def __enter__(self) -> Recorder:
        adapter = self.model.adapter
        wanted: dict[int, set[str]] = defaultdict(set)
        for site in self.sites:
            layer, kind = parse_site(site)
            wanted[layer].add(kind)
        blocks = adapter.blocks()
        for layer, kinds in wanted.items():
            if "resid_pre" in kinds:
                self._handles.append(blocks[layer].register_forward_pre_hook(self._pre_hook(layer)))
            if "resid_post" in kinds:
                self._handles.append(blocks[layer].register_forward_hook(self._post_hook(layer)))
            for kind, module in (
                ("ln1", adapter.ln1(layer)),
                ("attn.out", adapter.attn_out(layer)),
                ("mlp.out", adapter.mlp_out(layer)),
            ):
                if kind in kinds:
                    self._handles.append(
                        module.register_forward_hook(self._output_hook(site_name(layer, kind)))
                    )
            qkv_kinds = kinds.intersection(QKV_KINDS)
            if qkv_kinds:
                self._handles.extend(adapter.attach_qkv(layer, self._qkv_emit(layer, qkv_kinds)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._cache = {}
        self._qkv.clear()
        self._scratch = None

    def _pre_hook(self, layer: int):
        name = site_name(layer, "resid_pre")

        def hook(module, args, kwargs=None):
            self._store(name, args[0] if args else kwargs["hidden_states"])

        return hook

    def _post_hook(self, layer: int):
        name = site_name(layer, "resid_post")
        block_output = self.model.adapter.block_output

        def hook(module, args, output):
            self._store(name, block_output(output))

        return hook

    def _output_hook(self, name: str):
        def hook(module, args, output):
            self._store(name, output[0] if isinstance(output, tuple) else output)

        return hook

    def _qkv_emit(self, layer: int, kinds: set[str]):
        scale = self.model.arch.attn_scale
        need_scores = bool(kinds & {"attn.scores", "attn.pattern"})

        def emit(kind: str, tensor: torch.Tensor) -> None:
            held = self._qkv[layer]
            if f"attn.{kind}" in kinds:
                self._store(site_name(layer, f"attn.{kind}"), tensor)
            if need_scores and kind in ("q", "k"):
                held[kind] = tensor
                if "q" in held and "k" in held:
                    q, k = held.pop("q"), held.pop("k")
                    # float32 whatever the model ran in: patterns must be exact. The scale
                    # multiplies the (small) queries, as eager timm attention and the angle
                    # accumulator do, not the (B, H, T, T) logits: one pass over the logits
                    # fewer. Logits that are not recorded go to a buffer reused by every
                    # layer and batch (a fresh one per layer costs page faults)
                    out = None if "attn.scores" in kinds else self._scores_buffer(q, k)
                    scores = torch.matmul(q.float() * scale, k.float().transpose(-1, -2),
                                          out=out)
                    if "attn.scores" in kinds:
                        self._store(site_name(layer, "attn.scores"), scores)
                    if "attn.pattern" in kinds:
                        self._store(site_name(layer, "attn.pattern"), scores.softmax(dim=-1))

        return emit
