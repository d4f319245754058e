"""k-nearest-neighbour (KSG) mutual information: the reference for small samples.

Kraskov, Stoegbauer & Grassberger 2004 (Phys Rev E 69:066138), algorithm 1:

.. math::
   \\hat I = \\psi(k) + \\psi(N) - \\langle \\psi(n_x + 1) + \\psi(n_y + 1) \\rangle,

where ``eps_i`` is the max-norm distance from point ``i`` to its ``k``-th neighbour in
the joint space and ``n_x`` (``n_y``) counts the other points strictly closer than
``eps_i`` in ``x`` (``y``). As in scikit-learn's ``mutual_info_regression`` each
variable is scaled to unit standard deviation and jittered by ``1e-10`` (fixed seed)
to break ties; unlike it, the estimate is **not** clipped at zero. Cost
``O(N log N)`` per pair with a k-d tree, about 100 times slower than
:func:`vitprobe.stats.mutual_info` at ``N = 10k``; it under-estimates heavy-tailed
pairs (Czyz et al. 2023), which is why the binned estimator is the default.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.spatial import cKDTree
from scipy.special import digamma

from vitprobe.errors import ConfigurationError
from vitprobe.stats._common import paired_samples

__all__ = ["mutual_info_ksg"]


def _ksg_pair(x: np.ndarray, y: np.ndarray, k: int, rng: np.random.Generator) -> float:
    n = x.size
    x = x / (x.std() or 1.0)
    y = y / (y.std() or 1.0)
    x = x + 1e-10 * rng.standard_normal(n)
    y = y + 1e-10 * rng.standard_normal(n)
    xy = np.column_stack([x, y])
    eps = cKDTree(xy).query(xy, k=k + 1, p=np.inf)[0][:, -1]
    # strictly closer than eps: shrink the radius by one ulp
    r = np.nextafter(eps, 0)
    nx = cKDTree(x[:, None]).query_ball_point(x[:, None], r, p=np.inf, return_length=True) - 1
    ny = cKDTree(y[:, None]).query_ball_point(y[:, None], r, p=np.inf, return_length=True) - 1
    return float(digamma(k) + digamma(n) - np.mean(digamma(nx + 1) + digamma(ny + 1)))


def mutual_info_ksg(x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor, *, k: int = 3,
                    seed: int = 0) -> np.ndarray:
    """KSG estimate (algorithm 1) in nats, batched over leading axes, unclipped.

    Parameters
    ----------
    x, y : (..., N) arrays or tensors of paired samples.
    k : neighbours (3, as scikit-learn).
    seed : seed of the tie-breaking jitter.

    Returns
    -------
    float64 numpy array of shape ``x.shape[:-1]``.
    """
    xs, ys, lead = paired_samples(x, y)
    if isinstance(xs, torch.Tensor):
        xs = xs.detach().cpu()
    if isinstance(ys, torch.Tensor):
        ys = ys.detach().cpu()
    xs = np.asarray(xs, dtype=np.float64)
    ys = np.asarray(ys, dtype=np.float64)
    if not 1 <= int(k) < xs.shape[-1]:
        raise ConfigurationError(f"k must be in 1..N-1 = {xs.shape[-1] - 1} neighbours, got {k}")
    rng = np.random.default_rng(seed)
    out = np.array([_ksg_pair(a, b, k, rng) for a, b in zip(xs, ys, strict=True)])
    return out.reshape(lead)
