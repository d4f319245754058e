"""Exact spectra of low-rank query-key matrices M = A B^T from their factors.

Two tokens x, y (row vectors in d_model space) interact in one attention head through
the bilinear form ``x M y^T`` with ``M = W_Q W_K^T`` (Philip, Pan & Schwartz, poster
"Similarity or dissimilarity?"; Pan et al. 2024, arXiv 2405.14880). M is d x d but
has rank <= r = d_head, so every spectrum follows from the d x r factors A = W_Q,
B = W_K without ever forming the d x d matrix:

1. One thin QR of the joint factor ``C = [A B] = Q R`` (d x 2r), so that
   ``A = Q R_a`` and ``B = Q R_b`` with ``R_a, R_b`` the column blocks of R (n x r,
   n = min(d, 2r)). Then ``M = Q K Q^T`` with the small core ``K = R_a R_b^T`` (n x n),
   and because Q has orthonormal columns, M and K share their non-zero spectra.
2. ``M_sym = (M + M^T)/2 = Q S Q^T`` with ``S = (K + K^T)/2``: its (at most 2r)
   non-zero eigenvalues are those of the 2r x 2r symmetric matrix S (``eigh``);
   eigenvectors map back as ``Q w``. Equivalently ``M_sym = C J C^T`` with
   ``J = [[0, I/2], [I/2, 0]]``.
3. ``M_asym = (M - M^T)/2 = Q X Q^T`` with ``X = (K - K^T)/2`` real antisymmetric:
   its eigenvalues are purely imaginary pairs ``+-i lambda``. We take ``lambda^2`` from
   the symmetric problem ``X^T X`` (each value twice) and, for the kept modes, the real
   invariant plane {a, b} with ``M_asym a = lambda b`` and ``M_asym b = -lambda a``
   (so ``M_asym = sum_k lambda_k (b_k a_k^T - a_k b_k^T)``).
4. The SVD: since R is upper triangular, ``A = Q_1 R_11`` (first r columns), so
   ``M = Q_1 (R_11 R_b^T) Q^T`` and the SVD of the r x n core gives
   ``M = sum_i s_i u_i v_i^T`` with ``u_i = Q [U_i; 0]``, ``v_i = Q V_i``. The cosine
   ``u_i . v_i`` is computed in the small space (Q is orthonormal).

Everything runs in float64. The QR is Cholesky-QR (``R^T R = C^T C``) for
well-conditioned heads and Householder (torch ``geqrf``/``ormqr``; ``numpy.linalg.qr``
on stacked matrices is about 20x slower here) for the rest; the eigenvalues depend on
``C^T C`` only, so both are as accurate.
``dense_qk_spectra`` is the slow reference (``numpy.linalg.eigvalsh``, ``eigvals``,
``svd`` on the d x d matrix) used by the tests and the benchmark.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from vitprobe.errors import InputShapeError

__all__ = ["QKSpectra", "dense_qk_spectra", "qk_spectra"]


@dataclass(frozen=True)
class QKSpectra:
    """Spectra of ``M = A B^T`` per head; every array has the factors' batch shape ``...``.

    Attributes
    ----------
    eig_sym : (..., 2r) float64
        Eigenvalues of ``M_sym``, sorted descending. At most 2r are non-zero; all d - 2r
        others are exactly zero and left out (the 2r slots include zeros when the rank
        is lower).
    lambda_asym : (..., r) float64
        The ``lambda >= 0`` of the ``+-i lambda`` eigenvalue pairs of ``M_asym``, descending.
        Taken as square roots of ``eig(X^T X)``: a lambda that is exactly 0 comes out
        as at most ~1e-8 * s_max (sqrt of rounding error); non-zero ones to ~1e-15.
    singular_values : (..., r) float64
        Singular values of M, descending (rank <= r).
    sv_cosine : (..., r) float64
        ``u_i . v_i`` for each singular pair (invariant to flipping both signs).
    fro2, fro2_sym, fro2_asym : (...) float64
        ``||M||_F^2``, ``||M_sym||_F^2``, ``||M_asym||_F^2`` (the last two sum to the first).
    trace : (...) float64
        ``trace(M) = sum_i s_i (u_i . v_i)``.
    sym_top_values : (..., k)
        The k eigenvalues of ``M_sym`` largest in absolute value (signed), by ``|value|``.
    sym_top_vectors : (..., k, d)
        Their unit eigenvectors in d_model space.
    sv_top_u, sv_top_v : (..., k, d)
        Left (query-side) and right (key-side) singular vectors of the top k modes.
    asym_top_lambda : (..., k)
        ``lambda`` of the top k antisymmetric pairs (``||M_asym a_k||``).
    asym_top_a, asym_top_b : (..., k, d)
        Orthonormal basis of each pair's invariant plane: ``M_asym a = lambda b``,
        ``M_asym b = -lambda a``; NaN where ``lambda`` is zero (plane undefined).
    """

    eig_sym: np.ndarray
    lambda_asym: np.ndarray
    singular_values: np.ndarray
    sv_cosine: np.ndarray
    fro2: np.ndarray
    fro2_sym: np.ndarray
    fro2_asym: np.ndarray
    trace: np.ndarray
    sym_top_values: np.ndarray
    sym_top_vectors: np.ndarray
    sv_top_u: np.ndarray
    sv_top_v: np.ndarray
    asym_top_lambda: np.ndarray
    asym_top_a: np.ndarray
    asym_top_b: np.ndarray


def _tensor(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu()
    return torch.from_numpy(np.asarray(x))


# Cholesky-QR is used for a head when its factor's diagonal spans less than this ratio
# (cond(C) below ~1e5): Q = C R^-1 then stays orthonormal to ~eps * cond(C)^2 < 1e-6.
_CHOL_MIN_DIAG_RATIO = 1e-5


class _JointQR:
    """Thin QR ``C = Q R`` of the joint factors C (N, d, m), Q implicit (d x n, n = min(d, m)).

    Well-conditioned heads use Cholesky-QR (``R^T R = C^T C``; about half the flops of
    Householder, and its spectra are as accurate, since they depend on ``C^T C`` only);
    the others (rank-deficient, ill-conditioned, or d < m) use Householder ``geqrf``.
    """

    def __init__(self, C: torch.Tensor):
        N, d, m = C.shape
        self.C, self.n = C, min(d, m)
        self.chol = torch.zeros(N, dtype=torch.bool)
        self.R = C.new_zeros(N, self.n, m)
        if d >= m:
            L, info = torch.linalg.cholesky_ex(C.mT @ C)
            diag = torch.diagonal(L, dim1=-2, dim2=-1)
            ratio = diag.min(-1).values / diag.max(-1).values.clamp_min(1e-300)
            self.chol = (info == 0) & (ratio > _CHOL_MIN_DIAG_RATIO)
            self.R[self.chol] = L[self.chol].mT
        self.house = torch.nonzero(~self.chol).flatten()
        if len(self.house):
            a, self.tau = torch.geqrf(C[self.house])
            self.a = a
            self.R[self.house] = a[:, : self.n, :].triu()

    def apply_q(self, W: torch.Tensor) -> torch.Tensor:
        """``Q @ W`` for W (N, n, c): the small-space vectors mapped back to (N, d, c)."""
        N, d, _ = self.C.shape
        out = W.new_empty(N, d, W.shape[-1])
        c = self.chol
        if bool(c.all()):  # common case: no masked copies of C
            return self.C @ torch.linalg.solve_triangular(self.R, W, upper=True)
        if bool(c.any()):
            y = torch.linalg.solve_triangular(self.R[c], W[c], upper=True)
            out[c] = self.C[c] @ y
        if len(self.house):
            Wh = W[self.house]
            pad = Wh.new_zeros(len(self.house), d - self.n, W.shape[-1])
            out[self.house] = torch.ormqr(self.a, self.tau, torch.cat([Wh, pad], dim=1))
        return out


@contextlib.contextmanager
def _single_thread() -> Iterator[None]:
    """Run torch single-threaded, restoring the previous setting afterwards.

    Stacks of small (128 x 128) eigen/SVD problems gain nothing from intra-op threads,
    and on a loaded machine OpenMP synchronisation inside them costs up to 5-10x
    (measured on 2 shared cores: 0.19 s single-threaded against 0.83 s with 2 threads).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _eigh_desc(S: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched symmetric eigendecomposition with eigenvalues descending."""
    w, v = torch.linalg.eigh(S)
    return w.flip(-1), v.flip(-1)


def _asym_planes(
    X: torch.Tensor, V: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k invariant planes of antisymmetric ``X`` (N, n, n) from eigenvectors V of X^T X.

    V's columns are ordered by descending eigenvalue ``lambda^2``; each eigenspace of
    ``X^T X`` is X-invariant, so walking V in order, removing the planes already taken
    and setting ``b = X a / ||X a||`` yields orthonormal planes even when several pairs
    share the same lambda. Returns a, b (N, n, k) and lambda (N, k).
    """
    N, n, _ = X.shape
    basis = X.new_zeros(N, n, 2 * k)
    a_out = X.new_full((N, n, k), float("nan"))
    b_out = X.new_full((N, n, k), float("nan"))
    lam_out = X.new_zeros(N, k)
    count = torch.zeros(N, dtype=torch.long)
    rows = torch.arange(N)
    scale = torch.linalg.matrix_norm(X, ord="fro").clamp_min(torch.finfo(X.dtype).tiny)
    for j in range(n):
        todo = count < k
        if not bool(todo.any()):
            break
        v = V[:, :, j]
        res = v - torch.einsum("nij,nj->ni", basis, torch.einsum("nij,ni->nj", basis, v))
        norm = torch.linalg.vector_norm(res, dim=1)
        take = todo & (norm > 0.5)
        if not bool(take.any()):
            continue
        idx = rows[take]
        a = res[take] / norm[take, None]
        xa = torch.einsum("nij,nj->ni", X[take], a)
        lam = torch.linalg.vector_norm(xa, dim=1)
        ok = lam > 1e-12 * scale[take]
        b = torch.where(ok[:, None], xa / lam.clamp_min(1e-300)[:, None], torch.zeros_like(xa))
        c = count[take]
        basis[idx, :, 2 * c] = a
        basis[idx, :, 2 * c + 1] = b
        a_out[idx, :, c] = torch.where(ok[:, None], a, torch.full_like(a, float("nan")))
        b_out[idx, :, c] = torch.where(ok[:, None], b, torch.full_like(b, float("nan")))
        lam_out[idx, c] = lam
        count[take] += 1
    return a_out, b_out, lam_out


def qk_spectra(
    W_Q: np.ndarray | torch.Tensor,
    W_K: np.ndarray | torch.Tensor,
    *,
    top_k: int = 8,
) -> QKSpectra:
    """All spectra of ``M = W_Q W_K^T`` per head, exactly, from the d x r factors.

    Parameters
    ----------
    W_Q, W_K : (..., d, r) arrays or tensors
        Query and key factors per head (``q = x W_Q``, ``k = y W_K``), any leading batch
        shape (e.g. (layer, head)). Converted to float64. Requires ``d >= r``.
    top_k : int
        Number of modes whose vectors are returned (clipped to r).

    Returns
    -------
    QKSpectra
        numpy float64 arrays with the batch shape ``...`` in front; see its docstring.

    Notes
    -----
    Runs single-threaded (``torch.set_num_threads(1)``, restored afterwards).

    Cost per head: one thin QR of a d x 2r matrix, two 2r x 2r symmetric eigenproblems and
    one r x 2r SVD, against d x d problems for the dense route (see the module
    docstring for the derivation).
    """
    with _single_thread():  # see _single_thread: stacks of small problems
        return _qk_spectra(_tensor(W_Q), _tensor(W_K), top_k)


def _qk_spectra(A: torch.Tensor, B: torch.Tensor, top_k: int) -> QKSpectra:
    if A.shape != B.shape or A.ndim < 2:
        raise InputShapeError(
            f"W_Q and W_K must have the same shape (..., d, r); got "
            f"{tuple(A.shape)} and {tuple(B.shape)}"
        )
    *batch, d, r = A.shape
    if d < r:
        raise InputShapeError(f"expected d_model >= d_head, got d={d}, r={r}")
    k = max(0, min(int(top_k), r))
    N = int(np.prod(batch, dtype=np.int64))
    C = torch.empty(N, d, 2 * r, dtype=torch.float64)  # joint factors C = [A B], float64
    C[..., :r] = A.reshape(N, d, r)
    C[..., r:] = B.reshape(N, d, r)
    qr = _JointQR(C)  # C = Q R
    n, R = qr.n, qr.R
    Ra, Rb = R[..., :r], R[..., r:]  # A = Q Ra, B = Q Rb (Q: d x n)
    K = Ra @ Rb.mT  # M = Q K Q^T

    # symmetric part
    S = 0.5 * (K + K.mT)
    mu, W = _eigh_desc(S)
    # antisymmetric part: X^T X has eigenvalues lambda^2, each twice
    X = 0.5 * (K - K.mT)
    nu, V = _eigh_desc(X.mT @ X)
    nu = nu.clamp_min(0.0)
    npairs = n // 2
    lam = torch.sqrt(0.5 * (nu[:, 0 : 2 * npairs : 2] + nu[:, 1 : 2 * npairs : 2]))
    # SVD: A = Q_1 R_11 (R upper triangular), so M = Q_1 (R_11 Rb^T) Q^T
    U, s, Vh = torch.linalg.svd(Ra[:, :r, :] @ Rb.mT, full_matrices=False)  # r,r / r / r,n
    cos = torch.einsum("nji,nij->ni", U, Vh[:, :, :r])

    fro2 = (K * K).sum((-2, -1))
    fro2_sym = (S * S).sum((-2, -1))
    fro2_asym = (X * X).sum((-2, -1))
    trace = torch.diagonal(K, dim1=-2, dim2=-1).sum(-1)

    # top-k vectors in the small space; one application of Q maps them to R^d
    order = torch.argsort(mu.abs(), dim=-1, descending=True)[:, :k]
    sym_vals = torch.gather(mu, 1, order)
    sym_vecs = torch.gather(W, 2, order[:, None, :].expand(N, n, k))
    u_small = torch.cat([U[:, :, :k], U.new_zeros(N, n - r, k)], dim=1)
    v_small = Vh[:, :k, :].mT
    pa, pb, plam = _asym_planes(X, V, k)
    small = torch.cat([sym_vecs, u_small, v_small, pa.nan_to_num(), pb.nan_to_num()], dim=2)
    full = qr.apply_q(small)
    nan_plane = torch.isnan(pa).any(1)  # (N, k)
    vec = [full[:, :, i * k : (i + 1) * k].mT for i in range(5)]  # each (N, k, d)
    vec[3] = vec[3].masked_fill(nan_plane[:, :, None], float("nan"))
    vec[4] = vec[4].masked_fill(nan_plane[:, :, None], float("nan"))

    def out(t: torch.Tensor, width: int | None = None, fill: float = 0.0) -> np.ndarray:
        if width is not None and t.shape[-1] < width:  # pad short spectra (only if d < 2r)
            t = torch.cat([t, t.new_full((*t.shape[:-1], width - t.shape[-1]), fill)], -1)
        return t.reshape((*batch, *t.shape[1:])).numpy()

    eig_sym = mu
    if n < 2 * r:  # d < 2r: the missing eigenvalues are zeros; keep the descending order
        eig_sym = torch.sort(torch.cat([mu, mu.new_zeros(N, 2 * r - n)], -1), descending=True)[0]
    return QKSpectra(
        eig_sym=out(eig_sym),
        lambda_asym=out(lam, r),
        singular_values=out(s),
        sv_cosine=out(cos),
        fro2=out(fro2),
        fro2_sym=out(fro2_sym),
        fro2_asym=out(fro2_asym),
        trace=out(trace),
        sym_top_values=out(sym_vals),
        sym_top_vectors=out(vec[0]),
        sv_top_u=out(vec[1]),
        sv_top_v=out(vec[2]),
        asym_top_lambda=out(plam),
        asym_top_a=out(vec[3]),
        asym_top_b=out(vec[4]),
    )


def dense_qk_spectra(M: np.ndarray, r: int) -> dict[str, np.ndarray]:
    """Reference spectra of one dense d x d matrix M with numpy (slow; for tests/benchmarks).

    Returns ``eig_sym`` (top 2r of ``eigvalsh(M_sym)`` by |value|, sorted descending),
    ``lambda_asym`` (the r largest positive imaginary parts of ``eigvals(M_asym)``) and
    ``singular_values`` (top r of ``svd(M)``), matching :func:`qk_spectra`'s layout.
    """
    M = np.asarray(M, dtype=np.float64)

    def pad(x: np.ndarray, n: int) -> np.ndarray:  # d < 2r: the remaining values are zeros
        return np.sort(np.r_[x, np.zeros(max(0, n - x.size))])[::-1][:n]

    mu = np.linalg.eigvalsh(0.5 * (M + M.T))
    mu = pad(mu[np.argsort(-np.abs(mu))[: 2 * r]], 2 * r)
    ev = np.linalg.eigvals(0.5 * (M - M.T))
    lam = pad(np.sort(np.abs(ev.imag))[::-1][: 2 * r : 2], r)
    s = np.linalg.svd(M, compute_uv=False)[:r]
    return {"eig_sym": mu, "lambda_asym": lam, "singular_values": s}
