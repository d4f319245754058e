"""Scalar summaries of query-key spectra (all reduce the last axis; numpy in, numpy out).

Notation: ``M = W_Q W_K^T`` for one head (or summed over a layer's heads),
``M_sym = (M + M^T)/2``, ``M_asym = (M - M^T)/2``, eigenvalues ``mu`` of ``M_sym``,
``+-i lambda`` of ``M_asym``, singular values ``s_i`` with vectors ``u_i, v_i``.

References: Philip, Pan & Schwartz (poster, "Similarity or dissimilarity?");
Pan et al. 2024, "Dissecting query-key interaction in vision transformers",
arXiv 2405.14880 (weighted cosine); Saponati et al. 2025, "The underlying structures of
self-attention", arXiv 2502.10927 (symmetry score); Roy & Vetterli 2007 (effective rank).
Degenerate inputs (an all-zero head) give NaN.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "asym_sym_ratio",
    "effective_rank",
    "energy_cumulative",
    "positive_share",
    "stable_rank",
    "symmetry_index",
    "weighted_cosine",
]


def _div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def positive_share(eig_sym: np.ndarray) -> np.ndarray:
    """``sum(mu > 0) / sum |mu|`` over M_sym's eigenvalues: 1 for positive semidefinite.

    The poster calls M_sym "largely positive definite"; M_sym has at most 2 d_head
    non-zero eigenvalues out of d_model, so it is never positive definite and this share
    of spectral mass is what the statement can mean. 0.5 for a symmetric spectrum.
    """
    mu = np.asarray(eig_sym, dtype=np.float64)
    return _div(np.clip(mu, 0, None).sum(-1), np.abs(mu).sum(-1))


def symmetry_index(fro2_sym: np.ndarray, fro2: np.ndarray) -> np.ndarray:
    """``2 s - 1`` with ``s = ||M_sym||_F^2 / ||M||_F^2`` (Saponati et al. 2025).

    Equals ``<M, M^T>_F / ||M||_F^2`` in [-1, 1]: 1 symmetric, -1 antisymmetric, about 0
    for a random (Gaussian) matrix.
    """
    return 2.0 * _div(fro2_sym, fro2) - 1.0


def asym_sym_ratio(fro2_asym: np.ndarray, fro2_sym: np.ndarray) -> np.ndarray:
    """``||M_asym||_F / ||M_sym||_F`` (1 for a random matrix, 0 symmetric, inf antisymmetric)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.sqrt(np.asarray(fro2_asym, np.float64) / np.asarray(fro2_sym, np.float64))


def weighted_cosine(singular_values: np.ndarray, sv_cosine: np.ndarray) -> np.ndarray:
    """``sum_i s_i (u_i . v_i) / sum_i s_i`` = ``trace(M) / ||M||_*`` (Pan et al. 2024).

    Positive when query and key directions coincide (attention to similar tokens),
    negative when they oppose. Not divided by d_head (their notebook's plotted values
    are; see shared/reference/related-work.md).
    """
    s = np.asarray(singular_values, dtype=np.float64)
    return _div((s * np.asarray(sv_cosine, np.float64)).sum(-1), s.sum(-1))


def effective_rank(singular_values: np.ndarray) -> np.ndarray:
    """``exp(H(p))`` with ``p_i = s_i / sum_j s_j`` (Roy & Vetterli 2007); in [1, rank]."""
    s = np.asarray(singular_values, dtype=np.float64)
    p = _div(s, s.sum(-1, keepdims=True))
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0).sum(-1)
    return np.where(np.isnan(p).any(-1), np.nan, np.exp(h))


def stable_rank(singular_values: np.ndarray) -> np.ndarray:
    """``||M||_F^2 / ||M||_2^2 = sum s_i^2 / s_1^2``; in [1, rank]."""
    s = np.asarray(singular_values, dtype=np.float64)
    return _div((s**2).sum(-1), s.max(-1) ** 2)


def energy_cumulative(singular_values: np.ndarray) -> np.ndarray:
    """Share of ``||M||_F^2`` in the top i+1 singular values, ``sum_{j<=i} s_j^2 / sum s^2``.

    Same shape as the input (descending singular values); entry ``k - 1`` is the share of
    energy in the top k modes.
    """
    e = np.asarray(singular_values, dtype=np.float64) ** 2
    return _div(np.cumsum(e, -1), e.sum(-1, keepdims=True))
