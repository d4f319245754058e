"""Pebay's pairwise combination of running moments, shared by the numpy/torch
accumulators and the compiled kernel (numba compiles the same function for scalars).

Reference: P. Pebay, "Formulas for robust, one-pass parallel computation of covariances
and arbitrary-order statistical moments", Sandia report SAND2008-6212 (2008).
"""

from __future__ import annotations

from typing import Any

__all__ = ["Moments", "combine_moments"]

Moments = tuple[float, Any, Any, Any, Any]


def combine_moments(a: Moments, b: Moments) -> Moments:
    """Pebay's pairwise combination of ``(n, mean, M2, M3, M4)`` (arrays, tensors or
    floats; M_k are sums of k-th powers of deviations from the mean)."""
    na, ma, m2a, m3a, m4a = a
    nb, mb, m2b, m3b, m4b = b
    if nb == 0:
        return a
    if na == 0:
        return b
    n = na + nb
    d = mb - ma
    d2 = d * d
    mean = ma + d * (nb / n)
    m2 = m2a + m2b + d2 * (na * nb / n)
    m3 = (m3a + m3b + d2 * d * (na * nb * (na - nb) / n**2)
          + 3.0 * d * (na * m2b - nb * m2a) / n)
    m4 = (m4a + m4b + d2 * d2 * (na * nb * (na * na - na * nb + nb * nb) / n**3)
          + 6.0 * d2 * (na * na * m2b + nb * nb * m2a) / n**2
          + 4.0 * d * (na * m3b - nb * m3a) / n)
    return n, mean, m2, m3, m4
