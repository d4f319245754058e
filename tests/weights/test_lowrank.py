"""The low-rank route against planted matrices and dense numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vitprobe.weights import measures as ms
from vitprobe.weights.lowrank import dense_qk_spectra, qk_spectra


def _orthonormal(rng: np.random.Generator, d: int, n: int) -> np.ndarray:
    return np.linalg.qr(rng.standard_normal((d, n)))[0]


def test_symmetric_positive_definite_planted(rng):
    d, r = 40, 6
    U = _orthonormal(rng, d, r)
    A = U * np.linspace(3.0, 0.5, r)  # M = U diag(.) U^T, symmetric PSD of rank r
    sp = qk_spectra(A, U)
    assert ms.positive_share(sp.eig_sym) == pytest.approx(1.0, abs=1e-12)
    assert ms.symmetry_index(sp.fro2_sym, sp.fro2) == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(sp.eig_sym[:r], np.linspace(3.0, 0.5, r), rtol=1e-12)
    np.testing.assert_allclose(sp.eig_sym[r:], 0, atol=1e-12)
    np.testing.assert_allclose(sp.lambda_asym, 0, atol=1e-6)
    np.testing.assert_allclose(sp.sv_cosine, 1.0, rtol=1e-10)
    assert ms.asym_sym_ratio(sp.fro2_asym, sp.fro2_sym) == pytest.approx(0, abs=1e-7)


def test_antisymmetric_planted_exact_pairs(rng):
    d, r = 40, 6
    Q = _orthonormal(rng, d, r)
    a, b = Q[:, :3], Q[:, 3:]
    lam = np.array([2.0, 1.0, 0.5])
    # M = sum_k lam_k (b_k a_k^T - a_k b_k^T) = [lam*b, -lam*a] [a, b]^T
    A = np.hstack([b * lam, -a * lam])
    B = np.hstack([a, b])
    M = A @ B.T
    assert np.abs(M + M.T).max() < 1e-14
    sp = qk_spectra(A, B, top_k=3)
    assert ms.symmetry_index(sp.fro2_sym, sp.fro2) == pytest.approx(-1.0, abs=1e-12)
    np.testing.assert_allclose(sp.eig_sym, 0, atol=1e-12)
    np.testing.assert_allclose(sp.lambda_asym[:3], lam, rtol=1e-12)
    np.testing.assert_allclose(sp.lambda_asym[3:], 0, atol=1e-7)
    ev = np.linalg.eigvals(M)
    top = ev[np.argsort(-np.abs(ev))[:6]]
    np.testing.assert_allclose(top.real, 0, atol=1e-12)
    np.testing.assert_allclose(np.sort(top.imag), np.sort(np.r_[lam, -lam]), rtol=1e-12)
    # invariant planes: M a = lam b, M b = -lam a, orthonormal
    for k in range(3):
        va, vb = sp.asym_top_a[k], sp.asym_top_b[k]
        np.testing.assert_allclose(M @ va, sp.asym_top_lambda[k] * vb, atol=1e-12)
        np.testing.assert_allclose(M @ vb, -sp.asym_top_lambda[k] * va, atol=1e-12)
    P = np.vstack([sp.asym_top_a, sp.asym_top_b])
    np.testing.assert_allclose(P @ P.T, np.eye(6), atol=1e-12)


def test_degenerate_lambdas_give_distinct_planes(rng):
    d = 30
    Q = _orthonormal(rng, d, 4)
    a, b = Q[:, :2], Q[:, 2:]  # two pairs with the same lambda = 1
    sp = qk_spectra(np.hstack([b, -a]), np.hstack([a, b]), top_k=3)
    np.testing.assert_allclose(sp.asym_top_lambda[:2], 1.0, rtol=1e-12)
    P = np.vstack([sp.asym_top_a[:2], sp.asym_top_b[:2]])
    np.testing.assert_allclose(P @ P.T, np.eye(4), atol=1e-12)
    assert np.isnan(sp.asym_top_a[2]).all()  # third pair has lambda 0: plane undefined


def test_random_gaussian_factors_symmetry_near_zero(rng):
    A = rng.standard_normal((32, 96, 8))
    B = rng.standard_normal((32, 96, 8))
    sp = qk_spectra(A, B, top_k=1)
    sym = ms.symmetry_index(sp.fro2_sym, sp.fro2)
    assert abs(sym.mean()) < 0.03
    assert np.abs(sym).max() < 0.2
    assert ms.positive_share(sp.eig_sym).mean() == pytest.approx(0.5, abs=0.03)
    assert ms.asym_sym_ratio(sp.fro2_asym, sp.fro2_sym).mean() == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize(("d", "r"), [(48, 6), (64, 16), (10, 6), (7, 7)])
def test_matches_dense_numpy(rng, d, r):
    A = rng.standard_normal((3, d, r)) * rng.uniform(0.1, 3, (3, 1, r))
    B = rng.standard_normal((3, d, r))
    sp = qk_spectra(torch.from_numpy(A).float(), torch.from_numpy(B).float())
    A32, B32 = (torch.from_numpy(x).float().double().numpy() for x in (A, B))
    for h in range(3):
        M = A32[h] @ B32[h].T
        ref = dense_qk_spectra(M, r)
        scale = np.abs(ref["singular_values"]).max()
        for key, got in (
            ("eig_sym", sp.eig_sym[h]),
            ("lambda_asym", sp.lambda_asym[h]),
            ("singular_values", sp.singular_values[h]),
        ):
            np.testing.assert_allclose(got, ref[key], rtol=0, atol=1e-6 * scale, err_msg=key)
        nuclear = np.linalg.svd(M, compute_uv=False).sum()
        wcos = ms.weighted_cosine(sp.singular_values[h], sp.sv_cosine[h])
        assert wcos == pytest.approx(np.trace(M) / nuclear, rel=1e-9, abs=1e-12)
        assert sp.trace[h] == pytest.approx(np.trace(M), rel=1e-9, abs=1e-9)
        assert sp.fro2[h] == pytest.approx((M * M).sum(), rel=1e-10)
        assert sp.fro2_sym[h] + sp.fro2_asym[h] == pytest.approx(sp.fro2[h], rel=1e-10)


def test_top_vectors_solve_their_eigenproblems(rng):
    d, r, k = 50, 5, 4
    A, B = rng.standard_normal((2, 2, d, r))
    sp = qk_spectra(A, B, top_k=k)
    assert sp.sym_top_vectors.shape == (2, k, d)
    for h in range(2):
        M = A[h] @ B[h].T
        S, X = (M + M.T) / 2, (M - M.T) / 2
        mu = np.linalg.eigvalsh(S)
        np.testing.assert_allclose(
            np.abs(sp.sym_top_values[h]), np.sort(np.abs(mu))[::-1][:k], rtol=1e-10
        )
        for i in range(k):
            w = sp.sym_top_vectors[h, i]
            np.testing.assert_allclose(S @ w, sp.sym_top_values[h, i] * w, atol=1e-10)
            u, v, s = sp.sv_top_u[h, i], sp.sv_top_v[h, i], sp.singular_values[h, i]
            np.testing.assert_allclose(M @ v, s * u, atol=1e-10)
            np.testing.assert_allclose(M.T @ u, s * v, atol=1e-10)
            assert u @ v == pytest.approx(sp.sv_cosine[h, i], abs=1e-10)
            a, b, lam = sp.asym_top_a[h, i], sp.asym_top_b[h, i], sp.asym_top_lambda[h, i]
            np.testing.assert_allclose(X @ a, lam * b, atol=1e-10)
            np.testing.assert_allclose(X @ b, -lam * a, atol=1e-10)
        np.testing.assert_allclose(sp.asym_top_lambda[h], sp.lambda_asym[h, :k], rtol=1e-8)


def test_shapes_and_errors(rng):
    A = rng.standard_normal((2, 3, 20, 4))
    sp = qk_spectra(A, A, top_k=99)  # top_k clipped to r
    assert sp.eig_sym.shape == (2, 3, 8)
    assert sp.singular_values.shape == sp.lambda_asym.shape == (2, 3, 4)
    assert sp.sv_top_u.shape == (2, 3, 4, 20)
    assert sp.fro2.shape == (2, 3)
    with pytest.raises(ValueError, match="same shape"):
        qk_spectra(A, A[..., :3])
    with pytest.raises(ValueError, match="d_model >= d_head"):
        qk_spectra(A.swapaxes(-1, -2), A.swapaxes(-1, -2))
