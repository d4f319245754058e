"""Hugging Face text transformers for the query-key analysis (weights only, no inputs).

Spec ``hf-text:<repo-or-local-dir>``: ``AutoModel.from_pretrained`` for trained weights,
``AutoModel.from_config`` (seeded, global RNG untouched) for the random-init baseline.
BERT-style encoders, GPT-2-style decoders (fused ``c_attn``) and grouped-query models
(Llama, Qwen2, Mistral) are read by :func:`vitprobe.weights.modules.factors_from_module`.
"""

from __future__ import annotations

import torch

from vitprobe.errors import UnsupportedModelError
from vitprobe.weights.factors import QKFactors, with_meta
from vitprobe.weights.modules import factors_from_module

__all__ = ["TEXT_PREFIX", "load_text_factors"]

TEXT_PREFIX = "hf-text:"


def load_text_factors(spec: str, *, pretrained: bool = True, seed: int = 0) -> QKFactors:
    """QKFactors of the Hugging Face text model named by ``hf-text:<repo-or-dir>``."""
    from transformers import AutoConfig, AutoModel

    path = spec.removeprefix(TEXT_PREFIX)
    try:
        if pretrained:
            model = AutoModel.from_pretrained(path)
        else:
            config = AutoConfig.from_pretrained(path)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = AutoModel.from_config(config)
    except (OSError, ValueError) as err:
        raise UnsupportedModelError(
            f"cannot load a Hugging Face model from {path!r}: {err}"
        ) from err
    f = factors_from_module(model, spec=spec)
    what = "trained weights" if pretrained else f"random init (seed {seed})"
    return with_meta(f, spec=spec, source=f"{type(model).__name__} {what} from {path}")
