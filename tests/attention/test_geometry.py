"""pair_geometry's centred cosines against float64 ground truth."""

from __future__ import annotations

import pytest
import torch

from vitprobe.attention.geometry import pair_geometry


@pytest.mark.parametrize("offset", [0.0, 3.0, 30.0])
def test_centred_cosines_direct_and_by_rank_two_correction_agree(offset: float) -> None:
    """The two ways pair_geometry centres the Gram (the accelerator path always forms
    it directly) give the float64 centred cosines, the correction losing digits as the
    tokens share a larger mean (anisotropy)."""
    g = torch.Generator().manual_seed(3)
    e = torch.randn(3, 17, 32, generator=g) + offset * torch.randn(32, generator=g)
    mu = e.reshape(-1, 32).mean(0)
    d = (e - mu).double()
    d = d / d.norm(dim=-1, keepdim=True)
    exact = d @ d.transpose(1, 2)
    for direct, tol in ((True, 2e-6), (False, 2e-6 * (1 + offset**2))):
        cos = pair_geometry(e, 1, 8, ("raw", "centered"), mean_token=mu,
                            direct_centring=direct, cosines_only=True).cos[1]
        torch.testing.assert_close(cos.double(), exact, atol=tol, rtol=0)
