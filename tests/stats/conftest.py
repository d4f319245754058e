"""Synthetic recorded batches shaped like the foundation's cache (no model needed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vitprobe.stats.layout import NeuronLayout


def gaussian_mi(rho: np.ndarray | float) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return -0.5 * np.log1p(-np.square(rho))


def planted_rho(layout: NeuronLayout, decay: float = 0.8) -> np.ndarray:
    """Correlation of each position with the centre: decay ** distance (1 at the centre)."""
    return decay ** layout.distance


class PlantedStream:
    """Batches where every channel at position p is ``rho_p z + sqrt(1 - rho_p^2) e_p``
    with ``z`` the central value (shared latent), so MI(centre, p) = -1/2 log(1 - rho_p^2).
    Prefix tokens are independent noise."""

    def __init__(self, layout: NeuronLayout, *, seed: int = 0, decay: float = 0.8,
                 dtype: torch.dtype = torch.float32, scale: float = 1.0) -> None:
        self.layout = layout
        self.gen = torch.Generator().manual_seed(seed)
        self.rho = torch.as_tensor(planted_rho(layout, decay), dtype=torch.float64)
        self.dtype = dtype
        self.scale = scale

    def batch(self, b: int) -> dict[str, torch.Tensor]:
        lay = self.layout
        n_tok = int(lay.token_index.max()) + 1
        cache = {}
        for layer, s in lay.groups():
            z = torch.randn(b, 1, lay.d_model, generator=self.gen, dtype=torch.float64)
            e = torch.randn(b, lay.n_positions, lay.d_model, generator=self.gen,
                            dtype=torch.float64)
            r = self.rho[None, :, None]
            x = r * z + torch.sqrt(1 - r**2) * e
            t = torch.randn(b, n_tok, lay.d_model, generator=self.gen, dtype=torch.float64)
            t[:, torch.as_tensor(lay.token_index)] = x
            cache[f"blocks.{layer}.{s}.out"] = (self.scale * t).to(self.dtype)
        return cache


@pytest.fixture
def small_layout() -> NeuronLayout:
    return NeuronLayout(n_layers=2, d_model=6, grid=(4, 4), n_prefix=1)
