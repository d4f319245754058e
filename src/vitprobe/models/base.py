"""One interface over every ViT family: architecture facts, weights, hook points.

A *family adapter* (``timm_vit``, ``hf_vit``, ``torchvision_vit``) knows where a
model family keeps its blocks, LayerNorms, projections and LayerScales. It
answers a handful of questions (:class:`FamilyAdapter`); everything else —
stacked weight tensors, recording, streaming — is written once, in
:class:`ProbedViT` and :mod:`vitprobe.record`.

Conventions (also in the README):

* layers are numbered from 0 in code and labelled 1..L in figures;
* tokens are ordered prefix tokens first (class, distillation, registers), then
  patches in row-major order; ``patch_token_index[r, c]`` is the token index of
  the patch in grid row ``r``, column ``c``;
* ``W_Q[l, h]`` has shape (d_model, d_head) so that ``q = ln1(x) @ W_Q[l, h] + b_Q[l, h]``
  for a row vector ``x``; likewise ``W_K``, ``W_V``; ``W_O[l, h]`` is (d_head, d_model).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import torch
from torch import nn

from vitprobe.errors import InputShapeError
from vitprobe.models.preprocess import PreprocessConfig

#: emit(kind, tensor) with kind in {"q", "k", "v"} and tensor (batch, head, token, d_head)
QKVEmit = Callable[[str, torch.Tensor], None]


@dataclass(frozen=True)
class ViTArch:
    """Static facts about a ViT, identical for every family.

    Attributes:
        family: adapter name (``"timm"``, ``"hf"``, ``"torchvision"``).
        n_layers: number of transformer blocks.
        n_heads: attention heads per block.
        d_model: width of the residual stream.
        d_head: width of one head's query/key/value.
        prefix_tokens: kinds of the tokens before the patches, in order:
            ``"cls"``, ``"dist"`` (DeiT distillation) or ``"reg"`` (registers).
        grid: (rows, cols) of the patch grid at ``preprocess.input_size``.
        patch_size: patch side in pixels.
        attn_scale: the factor applied to ``q k^T`` before the softmax
            (``d_head ** -0.5`` in every family supported).
        ln1_eps: epsilon of the LayerNorm in front of attention.
        preprocess: what the model expects of its input images.
    """

    family: str
    n_layers: int
    n_heads: int
    d_model: int
    d_head: int
    prefix_tokens: tuple[str, ...]
    grid: tuple[int, int]
    patch_size: int
    attn_scale: float
    ln1_eps: float
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)

    @property
    def n_prefix(self) -> int:
        return len(self.prefix_tokens)

    @property
    def n_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def n_tokens(self) -> int:
        return self.n_prefix + self.n_patches


@dataclass
class AttentionWeights:
    """One layer's attention parameters in nn.Linear layout (out_features, in_features).

    ``q_weight`` is (n_heads * d_head, d_model) with heads contiguous along the
    first axis, as in every supported family; biases may be None.
    """

    q_weight: torch.Tensor
    k_weight: torch.Tensor
    v_weight: torch.Tensor
    o_weight: torch.Tensor  # (d_model, n_heads * d_head)
    q_bias: torch.Tensor | None
    k_bias: torch.Tensor | None
    v_bias: torch.Tensor | None
    o_bias: torch.Tensor | None
    ln1_weight: torch.Tensor
    ln1_bias: torch.Tensor


class FamilyAdapter(ABC):
    """What a model family must tell vitprobe. One subclass per family module."""

    family: str = ""

    def __init__(self, model: nn.Module):
        self.model = model

    @abstractmethod
    def arch(self) -> ViTArch: ...

    @abstractmethod
    def blocks(self) -> Sequence[nn.Module]:
        """The transformer blocks in order; their input is ``resid_pre``, output ``resid_post``."""

    @abstractmethod
    def ln1(self, layer: int) -> nn.Module:
        """Module whose output is the tokens as attention sees them."""

    @abstractmethod
    def attn_out(self, layer: int) -> nn.Module:
        """Module whose output is the MHA sublayer's addition to the residual stream."""

    @abstractmethod
    def mlp_out(self, layer: int) -> nn.Module:
        """Module whose output is the MLP sublayer's addition to the residual stream."""

    @abstractmethod
    def attach_qkv(self, layer: int, emit: QKVEmit) -> list[Any]:
        """Register hooks that call ``emit(kind, (batch, head, token, d_head))`` with
        the q, k, v that the layer's attention actually uses; return the handles."""

    @abstractmethod
    def attention_weights(self, layer: int) -> AttentionWeights: ...

    @abstractmethod
    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """The model's own output for ``pixels`` (logits, or the final hidden states)."""

    def block_output(self, output: Any) -> torch.Tensor:
        """Hidden states from a block's return value (some families return tuples)."""
        return output[0] if isinstance(output, tuple) else output


def _split_heads(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(n_heads * d_head, d_model) Linear weight -> (n_heads, d_model, d_head)."""
    out_features, d_model = weight.shape
    return weight.reshape(n_heads, out_features // n_heads, d_model).transpose(1, 2)


class ProbedViT:
    """A ViT with TransformerLens-style access to its weights and activations.

    Build one with :func:`vitprobe.load_model`. Weight tensors are float32 copies
    on the CPU, stacked over layers and heads:

    ========  ===================================  ==================
    name      shape                                 meaning
    ========  ===================================  ==================
    W_Q       (n_layers, n_heads, d_model, d_head)  q = ln1(x) @ W_Q + b_Q
    W_K, W_V  (n_layers, n_heads, d_model, d_head)  likewise for k, v
    b_Q...    (n_layers, n_heads, d_head)           zeros where absent
    W_O       (n_layers, n_heads, d_head, d_model)  head outputs -> residual
    b_O       (n_layers, d_model)
    ln1_w/_b  (n_layers, d_model)                   pre-attention LayerNorm
    ========  ===================================  ==================

    ``W_O`` does not include LayerScale; ``blocks.{l}.attn.out`` does.
    """

    def __init__(self, adapter: FamilyAdapter, *, spec: str, source: str, pretrained: bool):
        self.adapter = adapter
        self.model = adapter.model.eval()
        self.arch = adapter.arch()
        self.spec = spec
        self.source = source
        self.pretrained = pretrained

    # -- architecture facts -------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        # n_layers, n_heads, d_model, d_head, prefix_tokens, grid, patch_size, ...
        arch = self.__dict__.get("arch")
        if arch is not None and hasattr(arch, name):
            return getattr(arch, name)
        raise AttributeError(f"{type(self).__name__!s} has no attribute {name!r}")

    @property
    def preprocess(self) -> PreprocessConfig:
        return self.arch.preprocess

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @cached_property
    def patch_token_index(self) -> np.ndarray:
        """(rows, cols) int array: token index of each patch (prefix tokens come first)."""
        rows, cols = self.arch.grid
        return self.arch.n_prefix + np.arange(rows * cols).reshape(rows, cols)

    # -- weights --------------------------------------------------------------
    @cached_property
    def _weights(self) -> list[AttentionWeights]:
        return [self.adapter.attention_weights(layer) for layer in range(self.arch.n_layers)]

    def _stack(
        self, pick: Callable[[AttentionWeights], torch.Tensor | None], shape
    ) -> torch.Tensor:
        parts = []
        for w in self._weights:
            t = pick(w)
            parts.append(torch.zeros(shape) if t is None else t.detach().float().cpu())
        return torch.stack(parts)

    def _heads(self, attr: str) -> torch.Tensor:
        return self._stack(lambda w: _split_heads(getattr(w, attr), self.n_heads), None)

    def _head_bias(self, attr: str) -> torch.Tensor:
        def pick(w: AttentionWeights) -> torch.Tensor | None:
            b = getattr(w, attr)
            return None if b is None else b.reshape(self.n_heads, self.d_head)

        return self._stack(pick, (self.n_heads, self.d_head))

    @cached_property
    def W_Q(self) -> torch.Tensor:
        return self._heads("q_weight")

    @cached_property
    def W_K(self) -> torch.Tensor:
        return self._heads("k_weight")

    @cached_property
    def W_V(self) -> torch.Tensor:
        return self._heads("v_weight")

    @cached_property
    def W_O(self) -> torch.Tensor:
        # o_weight is (d_model, H * d_head): column block h belongs to head h
        return self._stack(
            lambda w: w.o_weight.T.reshape(self.n_heads, self.d_head, self.d_model), None
        )

    @cached_property
    def b_Q(self) -> torch.Tensor:
        return self._head_bias("q_bias")

    @cached_property
    def b_K(self) -> torch.Tensor:
        return self._head_bias("k_bias")

    @cached_property
    def b_V(self) -> torch.Tensor:
        return self._head_bias("v_bias")

    @cached_property
    def b_O(self) -> torch.Tensor:
        return self._stack(lambda w: w.o_bias, (self.d_model,))

    @cached_property
    def ln1_weight(self) -> torch.Tensor:
        return self._stack(lambda w: w.ln1_weight, (self.d_model,))

    @cached_property
    def ln1_bias(self) -> torch.Tensor:
        return self._stack(lambda w: w.ln1_bias, (self.d_model,))

    @property
    def ln1_eps(self) -> float:
        return self.arch.ln1_eps

    # -- running --------------------------------------------------------------
    def to(self, device: str | torch.device) -> ProbedViT:
        self.model.to(device)
        return self

    @torch.inference_mode()
    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        _check_pixels(pixels)
        return self.adapter.forward(pixels.to(self.device))

    def run_with_cache(
        self,
        pixels: torch.Tensor,
        sites: str | Iterable[str] = "blocks.*.resid_post",
        *,
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Run one batch and return ``(output, cache)``, cache mapping site -> tensor.

        Args:
            pixels: (batch, 3, H, W) preprocessed images (see :attr:`preprocess`).
            sites: site names or globs, e.g. ``"blocks.*.attn.pattern"``
                (see :mod:`vitprobe.record.sites`).
            dtype: cast recorded tensors to this dtype (default: as computed).
            device: move recorded tensors there (default: stay on the model's device).
        """
        from vitprobe.record import Recorder

        with Recorder(self, sites, dtype=dtype, device=device) as rec:
            output = self(pixels)
            return output, rec.pop()

    def stream(
        self,
        batches: Iterable[Any],
        sites: str | Iterable[str],
        *,
        consumer: Callable[[Any, dict[str, torch.Tensor]], None] | None = None,
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
        autocast: torch.dtype | None = None,
    ) -> Iterator[tuple[Any, dict[str, torch.Tensor]]] | None:
        """Record ``sites`` batch after batch, without keeping anything.

        ``batches`` yields pixel tensors or dicts with a ``"pixels"`` entry (as
        :func:`vitprobe.data.make_loader` does). With ``consumer``, each
        ``(batch, cache)`` is handed to it and the call returns None; without,
        an iterator of ``(batch, cache)`` is returned. The cache of a batch is
        released before the next batch runs, so memory does not grow.

        Args:
            autocast: run the model under ``torch.autocast`` with this dtype
                (e.g. ``torch.bfloat16`` on CUDA); recorded attention patterns
                are still computed in float32.
        """
        iterator = _stream(self, batches, sites, dtype=dtype, device=device, autocast=autocast)
        if consumer is None:
            return iterator
        for batch, cache in iterator:
            consumer(batch, cache)
        return None

    def describe(self) -> Mapping[str, Any]:
        """Plain facts for ``vitprobe info`` and run manifests."""
        a = self.arch
        return {
            "spec": self.spec,
            "source": self.source,
            "pretrained": self.pretrained,
            "family": a.family,
            "model_class": type(self.model).__name__,
            "n_layers": a.n_layers,
            "n_heads": a.n_heads,
            "d_model": a.d_model,
            "d_head": a.d_head,
            "prefix_tokens": list(a.prefix_tokens),
            "grid": list(a.grid),
            "patch_size": a.patch_size,
            "n_tokens": a.n_tokens,
            "attn_scale": a.attn_scale,
            "ln1_eps": a.ln1_eps,
            "preprocess": a.preprocess.to_dict(),
            "n_parameters": sum(p.numel() for p in self.model.parameters()),
        }

    def __repr__(self) -> str:
        a = self.arch
        return (
            f"ProbedViT({self.spec!r}, layers={a.n_layers}, heads={a.n_heads}, "
            f"d_model={a.d_model}, grid={a.grid}, prefix={a.prefix_tokens})"
        )


def _stream(model: ProbedViT, batches, sites, *, dtype, device, autocast):
    from vitprobe.record import Recorder

    ctx_device = model.device.type
    with Recorder(model, sites, dtype=dtype, device=device) as rec:
        for batch in batches:
            pixels = batch["pixels"] if isinstance(batch, Mapping) else batch
            with torch.autocast(ctx_device, dtype=autocast, enabled=autocast is not None):
                model(pixels)
            cache = rec.pop()
            yield batch, cache
            del cache


def _check_pixels(pixels: Any) -> None:
    """A batch must be a floating (batch, channels, H, W) tensor: name what else it is (a
    model's own error for a channels-last batch reads "Input width (3) doesn't match
    model"). The channel count is left to the model (a ViT may take other than 3)."""
    if not isinstance(pixels, torch.Tensor):
        raise InputShapeError(f"pixels must be a torch.Tensor of shape (batch, 3, H, W), got "
                              f"{type(pixels).__name__} (torch.from_numpy for an array)")
    shape = tuple(pixels.shape)
    hint = ""
    if pixels.ndim == 3:
        hint = ": one image? pixels[None]"
    elif pixels.ndim == 4 and shape[-1] == 3 and shape[1] != 3:
        hint = ": channels last? pixels.permute(0, 3, 1, 2)"
    if hint or pixels.ndim != 4:
        raise InputShapeError(f"pixels must have shape (batch, 3, H, W), got {shape}{hint}")
    if not pixels.is_floating_point():
        raise InputShapeError(f"pixels must be preprocessed floats (model.preprocess), got "
                              f"{pixels.dtype}")
