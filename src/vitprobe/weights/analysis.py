"""``analyze_qk``: the query-key weight analysis of every head as an xarray Dataset.

Per head (Philip, Pan & Schwartz, poster "Similarity or dissimilarity?"): the bilinear
form ``M = W_Q W_K^T`` (d_model x d_model, rank <= d_head) and its parts
``M_sym = (M + M^T)/2`` (reads as similarity when its spectrum is positive) and
``M_asym = (M - M^T)/2`` (eigenvalues ``+-i lambda``). Measures follow Pan et al. 2024
(arXiv 2405.14880: singular modes, weighted cosine u_i . v_i) and Saponati et al. 2025
(arXiv 2502.10927: symmetry score of the layer's summed M). Spectra are exact, from the
factors (see :mod:`vitprobe.weights.lowrank`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import xarray as xr

from vitprobe.errors import ConfigurationError, UnsupportedModelError
from vitprobe.schema import RANDOM_INIT, TRAINED, stack_models
from vitprobe.weights import measures as ms
from vitprobe.weights.factors import (
    QKFactors,
    effective_factors,
    factors_from_arrays,
    factors_from_probed,
)
from vitprobe.weights.lowrank import qk_spectra

__all__ = ["analyze_qk", "analyze_qk_models", "as_factors", "layer_sum_norms"]

REFERENCES = (
    "Philip, Pan & Schwartz, poster 'Probing vision transformer attention' (Figs. 5-6); "
    "Pan et al. 2024, arXiv 2405.14880; Saponati et al. 2025, arXiv 2502.10927"
)


def as_factors(model: Any) -> QKFactors:
    """QKFactors from a QKFactors, a ProbedViT-like object, an ``nn.Module`` or (W_Q, W_K)."""
    if isinstance(model, QKFactors):
        return model
    if hasattr(model, "W_Q") and hasattr(model, "W_K"):
        return factors_from_probed(model)
    if isinstance(model, torch.nn.Module):
        from vitprobe.weights.modules import factors_from_module

        return factors_from_module(model)
    if isinstance(model, tuple | list) and len(model) == 2:
        return factors_from_arrays(*model)
    if isinstance(model, str):
        raise UnsupportedModelError(
            f"analyze_qk takes a loaded model, not the spec {model!r}: "
            f"vitprobe.load_model({model!r}) first (hf-text: specs: "
            "vitprobe.weights.text.load_text_factors)")
    raise UnsupportedModelError(f"cannot read query/key weights from {type(model).__name__}")


def layer_sum_norms(A: np.ndarray, B: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``||M||_F^2`` and ``trace(M M) = <M, M^T>_F`` of each layer's summed ``M = sum_h A_h B_h^T``.

    A, B: (L, H, d, r). The summed M is generally full rank, so it is formed densely
    (one d x (H r) by (H r) x d product per layer, float64). Returns two (L,) arrays.
    """
    L, H, d, r = A.shape
    fro2, tr2 = np.empty(L), np.empty(L)
    for layer in range(L):
        a = torch.from_numpy(np.ascontiguousarray(A[layer].transpose(1, 0, 2)).reshape(d, H * r))
        b = torch.from_numpy(np.ascontiguousarray(B[layer].transpose(1, 0, 2)).reshape(d, H * r))
        M = a @ b.T
        fro2[layer] = float((M * M).sum())
        tr2[layer] = float((M * M.T).sum())
    return fro2, tr2


def _attrs(long_name: str, units: str, description: str) -> dict[str, str]:
    return {"long_name": long_name, "units": units, "description": description}


_VAL = "1 (x M y^T for unit-norm tokens x, y)"


def _one_model(f: QKFactors, *, fold_ln: bool, scale: bool, top_k: int) -> xr.Dataset:
    eff = effective_factors(f, fold_ln=fold_ln, scale=scale)
    sp = qk_spectra(eff.A, eff.B, top_k=top_k)
    k = sp.sym_top_values.shape[-1]
    lf2, ltr2 = layer_sum_norms(eff.A, eff.B)
    lh, lhm, lht, lhtc = (
        ("layer", "head"),
        ("layer", "head", "mode"),
        ("layer", "head", "top"),
        ("layer", "head", "top", "component"),
    )
    f32 = np.float32
    energy = ms.energy_cumulative(sp.singular_values)
    v: dict[str, tuple] = {
        "eig_sym": (
            ("layer", "head", "sym_mode"),
            sp.eig_sym,
            _attrs(
                "eigenvalues of M_sym",
                _VAL,
                "Eigenvalues of M_sym = (M + M^T)/2, sorted descending; the 2*d_head slots hold "
                "every non-zero eigenvalue (the other d_model - 2*d_head are exactly 0)",
            ),
        ),
        "lambda_asym": (
            lhm,
            sp.lambda_asym,
            _attrs(
                "lambda of M_asym",
                _VAL,
                "M_asym = (M - M^T)/2 has eigenvalues +-i*lambda; lambda >= 0, descending",
            ),
        ),
        "singular_value": (
            lhm,
            sp.singular_values,
            _attrs(
                "singular values of M", _VAL, "Singular values s_i of M = W_Q W_K^T, descending"
            ),
        ),
        "sv_cosine": (
            lhm,
            sp.sv_cosine,
            _attrs(
                "u_i . v_i",
                "1",
                "Cosine between the left (query) and right (key) singular "
                "vectors of each mode (Pan et al. 2024)",
            ),
        ),
        "energy_cumulative": (
            lhm,
            energy,
            _attrs(
                "cumulative energy share",
                "1",
                "sum_{j<=i} s_j^2 / sum_j s_j^2: share of ||M||_F^2 in the top i+1 modes",
            ),
        ),
        "positive_share": (
            lh,
            ms.positive_share(sp.eig_sym),
            _attrs(
                "positive share of eig(M_sym)",
                "1",
                "sum of positive eigenvalues of M_sym over sum of |eigenvalues| (1: positive "
                "semidefinite; 0.5: balanced)",
            ),
        ),
        "symmetry": (
            lh,
            ms.symmetry_index(sp.fro2_sym, sp.fro2),
            _attrs(
                "symmetry score 2s-1",
                "1",
                "2s-1 with s = ||M_sym||_F^2/||M||_F^2 per head (Saponati et al. 2025): 1 "
                "symmetric, -1 antisymmetric, ~0 random",
            ),
        ),
        "asym_sym_ratio": (
            lh,
            ms.asym_sym_ratio(sp.fro2_asym, sp.fro2_sym),
            _attrs("||M_asym||_F / ||M_sym||_F", "1", "Frobenius-norm ratio of the two parts"),
        ),
        "weighted_cosine": (
            lh,
            ms.weighted_cosine(sp.singular_values, sp.sv_cosine),
            _attrs(
                "weighted cosine",
                "1",
                "sum_i s_i (u_i . v_i) / sum_i s_i = trace(M) / ||M||_* "
                "(Pan et al. 2024; not divided by d_head)",
            ),
        ),
        "effective_rank": (
            lh,
            ms.effective_rank(sp.singular_values),
            _attrs("effective rank", "1", "exp(entropy of s_i / sum s) (Roy & Vetterli 2007)"),
        ),
        "stable_rank": (
            lh,
            ms.stable_rank(sp.singular_values),
            _attrs("stable rank", "1", "||M||_F^2 / ||M||_2^2"),
        ),
        "energy_top_k": (
            lh,
            energy[..., max(k, 1) - 1],
            _attrs(
                f"energy share of top {k} modes",
                "1",
                f"share of ||M||_F^2 in the top k = {k} singular values",
            ),
        ),
        "frobenius_norm": (lh, np.sqrt(sp.fro2), _attrs("||M||_F", _VAL, "Frobenius norm of M")),
        "trace": (lh, sp.trace, _attrs("trace(M)", _VAL, "trace(M) = trace(M_sym)")),
        "bias_key_norm": (
            lh,
            np.linalg.norm(eff.key_bias, axis=-1),
            _attrs(
                "||W_K b_Q||",
                "1 (per unit-norm key token)",
                "Norm of the key-only bias term b_Q W_K^T y^T (the only bias term that changes "
                "attention; not part of M)",
            ),
        ),
        "bias_query_norm": (
            lh,
            np.linalg.norm(eff.query_bias, axis=-1),
            _attrs(
                "||W_Q b_K||",
                "1 (per unit-norm query token)",
                "Norm of the query-only bias term x W_Q b_K^T (cancels in the softmax)",
            ),
        ),
        "bias_const": (
            lh,
            eff.const_bias,
            _attrs("b_Q . b_K", "1", "Constant bias term (cancels in the softmax)"),
        ),
        "bias_key_vector": (
            ("layer", "head", "component"),
            eff.key_bias.astype(f32),
            _attrs("W_K b_Q", "1", "Direction of the key-only bias term: logit += y . W_K b_Q"),
        ),
        "layer_symmetry": (
            ("layer",),
            ms.symmetry_index(0.5 * (lf2 + ltr2), lf2),
            _attrs(
                "layer symmetry score 2s-1",
                "1",
                "2s-1 of the layer's summed M = sum_h W_Q^h W_K^hT (Saponati et al. 2025)",
            ),
        ),
        "layer_asym_sym_ratio": (
            ("layer",),
            ms.asym_sym_ratio(0.5 * (lf2 - ltr2), 0.5 * (lf2 + ltr2)),
            _attrs("layer ||M_asym||_F / ||M_sym||_F", "1", "for the layer's summed M"),
        ),
        "sym_top_eigenvalue": (
            lht,
            sp.sym_top_values,
            _attrs("top eigenvalues of M_sym", _VAL, "The top_k eigenvalues by |value| (signed)"),
        ),
        "sym_vector": (
            lhtc,
            sp.sym_top_vectors.astype(f32),
            _attrs("eigenvectors of M_sym", "1", "Unit eigenvectors for sym_top_eigenvalue"),
        ),
        "sv_u": (
            lhtc,
            sp.sv_top_u.astype(f32),
            _attrs("left singular vectors", "1", "u_i of the top modes (query side: x . u_i)"),
        ),
        "sv_v": (
            lhtc,
            sp.sv_top_v.astype(f32),
            _attrs("right singular vectors", "1", "v_i of the top modes (key side: y . v_i)"),
        ),
        "asym_top_lambda": (
            lht,
            sp.asym_top_lambda,
            _attrs("top lambda of M_asym", _VAL, "lambda of the top pairs (= lambda_asym[:top_k])"),
        ),
        "asym_vector_a": (
            lhtc,
            sp.asym_top_a.astype(f32),
            _attrs(
                "antisymmetric plane vector a",
                "1",
                "Orthonormal a, b with M_asym a = lambda b and M_asym b = -lambda a, so "
                "a M_asym b^T = -lambda (NaN where lambda = 0)",
            ),
        ),
        "asym_vector_b": (
            lhtc,
            sp.asym_top_b.astype(f32),
            _attrs("antisymmetric plane vector b", "1", "See asym_vector_a"),
        ),
    }
    return xr.Dataset(
        {name: xr.Variable(dims, data, attrs) for name, (dims, data, attrs) in v.items()}
    )


def analyze_qk(
    model: Any,
    *,
    baseline: Any = None,
    fold_ln: bool = False,
    scale: bool = False,
    top_k: int = 8,
    label: str = TRAINED,
    baseline_label: str = RANDOM_INIT,
) -> xr.Dataset:
    """Query-key weight analysis of every head (and every layer's summed M).

    Parameters
    ----------
    model
        A ``vitprobe.models.ProbedViT`` (or any object with its W_Q/W_K/... attributes),
        a :class:`QKFactors`, a transformer ``nn.Module`` (Hugging Face text or vision,
        timm, torchvision; see :mod:`vitprobe.weights.modules`) or a pair
        ``(W_Q, W_K)`` of (L, H, d, r) / (H, d, r) / (d, r) arrays.
    baseline
        Optional second model of the same shape, normally a random-init copy of the same
        architecture; stored along ``model`` as ``baseline_label``.
    fold_ln
        Fold the pre-attention LayerNorm weight into M (tokens meet as LN(x); see
        :mod:`vitprobe.weights.factors`). Default False, as in Pan et al. 2024.
    scale
        Include the logit scale (d_head^-1/2) in M. Default False.
    top_k
        Modes whose vectors are kept per head (clipped to d_head); also the k of
        ``energy_top_k``.

    Returns
    -------
    xarray.Dataset
        Dims ``model`` (labels), ``layer`` (0-based), ``head``, ``mode`` (d_head),
        ``sym_mode`` (2*d_head), ``top`` (top_k), ``component`` (d_model). Spectra,
        per-head measures, per-layer summed-M measures, bias terms and top-k vectors;
        each variable has ``long_name``, ``units`` and ``description`` attrs.
    """
    named = {label: model}
    if baseline is not None:
        if baseline_label == label:
            raise ValueError(f"model labels must differ, got {label!r} twice")
        named[baseline_label] = baseline
    return analyze_qk_models(named, fold_ln=fold_ln, scale=scale, top_k=top_k)


def analyze_qk_models(
    models: Mapping[str, Any],
    *,
    fold_ln: bool = False,
    scale: bool = False,
    top_k: int = 8,
) -> xr.Dataset:
    """:func:`analyze_qk` of several models of the same shape, stacked along ``model``.

    Parameters
    ----------
    models
        Variant name -> model (anything :func:`analyze_qk` takes), the model under study
        first, then its controls (:mod:`vitprobe.schema`).
    fold_ln, scale, top_k
        As :func:`analyze_qk`.

    Returns
    -------
    xarray.Dataset
        As :func:`analyze_qk`, with one entry along ``model`` per item of ``models``.

    Raises
    ------
    UnsupportedModelError
        A model's weights do not have the first model's shape.
    ValueError
        ``models`` is empty, or ``top_k`` < 1 (``ConfigurationError``).
    """
    from vitprobe import __version__

    if not models:
        raise ValueError("no models to analyse")
    if int(top_k) < 1:
        raise ConfigurationError(f"top_k must be >= 1, got {top_k}")
    labels = [str(k) for k in models]
    factors = [as_factors(m) for m in models.values()]
    for lb, f in zip(labels[1:], factors[1:], strict=True):
        if f.W_Q.shape != factors[0].W_Q.shape:
            raise UnsupportedModelError(
                f"the models must share their shape: {lb}'s W_Q is (layers, heads, d_model, "
                f"d_head) = {tuple(f.W_Q.shape)}, {labels[0]}'s {tuple(factors[0].W_Q.shape)}")
    # per-model spec and source become coordinates along ``model`` (one stacking routine)
    ds = stack_models({
        lb: _one_model(f, fold_ln=fold_ln, scale=scale, top_k=top_k).assign_attrs(
            model_spec=f.spec, model_source=f.source)
        for lb, f in zip(labels, factors, strict=True)})
    f0 = factors[0]
    L, H, d, r = f0.W_Q.shape
    k = ds.sizes["top"]
    ds = ds.assign_coords(
        layer=(
            "layer",
            np.arange(L),
            {
                "long_name": "layer",
                "units": "1",
                "description": "0-based block index; labelled 1..L in figures",
            },
        ),
        head=("head", np.arange(H), {"long_name": "query head", "units": "1"}),
        mode=(
            "mode",
            np.arange(r),
            {"long_name": "mode index", "units": "1", "description": "0-based; mode 1 in figures"},
        ),
        sym_mode=(
            "sym_mode",
            np.arange(2 * r),
            {"long_name": "M_sym eigenvalue index", "units": "1"},
        ),
        top=("top", np.arange(k), {"long_name": "kept mode", "units": "1"}),
        kv_head=(
            "head",
            np.asarray(f0.kv_head),
            {"long_name": "key head read by this query head", "units": "1"},
        ),
    )
    ds["model_spec"].attrs["long_name"] = "model spec"
    ds["model_source"].attrs["long_name"] = "weight source"
    ds.attrs = {
        "title": "Query-key weight analysis (vitprobe qk)",
        "model_spec": f0.spec,
        "model_source": f0.source,
        "family": f0.family,
        "baseline_spec": factors[1].spec if len(factors) > 1 else "",
        "baseline_source": factors[1].source if len(factors) > 1 else "",
        "fold_ln": int(fold_ln),
        "scale": int(scale),
        "top_k": int(k),
        "n_layers": L,
        "n_heads": H,
        "d_model": d,
        "d_head": r,
        "layer_convention": "layer coordinate is 0-based; labelled 1..L in figures",
        "vitprobe_version": __version__,
        "references": REFERENCES,
        "models": labels,
    }
    return ds
