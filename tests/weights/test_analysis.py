"""analyze_qk's Dataset, its netCDF round trip, the summary table and the figures."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest

from tests.weights.conftest import D, H, L, probed_from_timm
from vitprobe.errors import ResultsError
from vitprobe.weights import analyze_qk, load_qk, save_qk, summary_table
from vitprobe.weights.factors import factors_from_arrays


@pytest.fixture(scope="module")
def ds(timm_vit):
    trained = probed_from_timm(timm_vit)
    rng = np.random.default_rng(7)
    baseline = factors_from_arrays(
        rng.standard_normal((L, H, D, D // H)) * 0.02,
        rng.standard_normal((L, H, D, D // H)) * 0.02,
        ln_weight=np.ones((L, D)),
        spec="random factors",
    )
    return analyze_qk(trained, baseline=baseline, fold_ln=True, top_k=3)


def test_dataset_layout(ds):
    r = D // H
    assert dict(ds.sizes) == {
        "model": 2,
        "layer": L,
        "head": H,
        "mode": r,
        "sym_mode": 2 * r,
        "top": 3,
        "component": D,
    }
    assert list(ds["model"].values) == ["trained", "random-init"]
    assert list(ds["layer"].values) == list(range(L))
    assert "1..L" in ds["layer"].attrs["description"]
    assert ds["eig_sym"].dims == ("model", "layer", "head", "sym_mode")
    assert ds["layer_symmetry"].dims == ("model", "layer")
    assert ds["sv_u"].dims == ("model", "layer", "head", "top", "component")
    for name, var in ds.data_vars.items():
        assert {"long_name", "units", "description"} <= set(var.attrs), name
    assert ds.attrs["fold_ln"] == 1 and ds.attrs["scale"] == 0
    assert ds.attrs["model_spec"] == "timm:tiny-test"
    assert ds.attrs["baseline_spec"] == "random factors"
    assert "vitprobe_version" in ds.attrs
    # spectra sorted descending, energy ends at 1, measures in range
    assert (np.diff(ds["eig_sym"].values, axis=-1) <= 1e-12).all()
    np.testing.assert_allclose(ds["energy_cumulative"].values[..., -1], 1.0)
    assert ((ds["symmetry"] >= -1) & (ds["symmetry"] <= 1)).all()
    np.testing.assert_allclose(
        ds["energy_top_k"].values, ds["energy_cumulative"].isel(mode=2).values
    )


def test_layer_symmetry_matches_dense(ds, timm_vit):
    from vitprobe.weights import effective_factors, factors_from_module

    eff = effective_factors(factors_from_module(timm_vit), fold_ln=True)
    for layer in range(L):
        M = sum(eff.A[layer, h] @ eff.B[layer, h].T for h in range(H))
        want = np.sum(M * M.T) / np.sum(M * M)
        got = ds["layer_symmetry"].sel(model="trained", layer=layer).item()
        assert got == pytest.approx(want, rel=1e-10)


def test_netcdf_round_trip(ds, tmp_path):
    path = save_qk(ds, tmp_path / "sub" / "qk.nc")
    back = load_qk(path)
    for name in ds.data_vars:
        np.testing.assert_array_equal(back[name].values, ds[name].values, err_msg=name)
    assert list(back["model"].values) == ["trained", "random-init"]
    assert back.attrs["d_head"] == D // H
    with pytest.raises(ResultsError):
        load_qk(tmp_path / "missing.nc")
    bad = tmp_path / "bad.nc"
    ds[["trace"]].to_netcdf(bad, engine="h5netcdf")
    with pytest.raises(ResultsError, match="not a vitprobe qk"):
        load_qk(bad)


def test_summary_table(ds):
    text = summary_table(ds)
    assert "[trained] timm:tiny-test" in text and "[random-init]" in text
    rows = [line for line in text.splitlines() if line.strip().startswith(("1 ", "2 "))]
    assert len(rows) == 2 * L
    first = rows[0].split()
    want = ds["positive_share"].sel(model="trained", layer=0).mean().item()
    assert float(first[1]) == pytest.approx(want, abs=5e-4)


def test_figures_render_from_saved_file(ds, tmp_path):
    from vitprobe.plots.qk import plot_qk_spectra, plot_qk_summary, plot_sym_asym_intuition

    assert matplotlib.get_backend().lower() == "agg"
    back = load_qk(save_qk(ds, tmp_path / "qk.nc"))
    fig = plot_qk_spectra(back, n_modes=6)
    assert len(fig.axes) == 3 * L
    assert fig.axes[0].get_ylabel().startswith("layer 1")
    fig2 = plot_qk_summary(back)
    assert fig2.axes[0].get_xlabel() == "layer"
    assert list(fig2.axes[0].get_xticks()) == [1, 2]
    fig3 = plot_sym_asym_intuition()
    for i, f in enumerate((fig, fig2, fig3)):
        f.savefig(tmp_path / f"{i}.png", dpi=40)
        assert (tmp_path / f"{i}.png").stat().st_size > 1000


def test_misuse_is_named(timm_vit):
    """A spec string, a baseline of another shape and top_k < 1 are refused, saying why."""
    from vitprobe.errors import ConfigurationError, UnsupportedModelError

    with pytest.raises(UnsupportedModelError, match=r"a loaded model, not the spec "
                                                    r"'timm:vit_tiny_patch16_224'"):
        analyze_qk("timm:vit_tiny_patch16_224")
    rng = np.random.default_rng(0)
    other = (rng.standard_normal((2, 3, 8, 4)), rng.standard_normal((2, 3, 8, 4)))
    with pytest.raises(UnsupportedModelError, match=r"must share their shape: random-init's "
                                                    r"W_Q .* = \(2, 3, 8, 4\)"):
        analyze_qk(timm_vit, baseline=other)
    with pytest.raises(ConfigurationError, match="top_k must be >= 1, got 0"):
        analyze_qk(timm_vit, top_k=0)
