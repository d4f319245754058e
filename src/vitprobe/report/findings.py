"""The report's "main findings": sentences computed from the saved numbers, never written
by hand. Layers are named 1..L, as in the figures."""

from __future__ import annotations

import numpy as np
import xarray as xr

from vitprobe.report.figures import has_control, trained


def _L(layer) -> int:
    return int(layer) + 1


def findings(datasets: dict[str, xr.Dataset]) -> list[str]:
    out: list[str] = []
    for name, fn in (("mi", _mi), ("moments", _moments), ("qk", _qk), ("angles", _angles)):
        if name in datasets:
            out += fn(datasets[name])
    return out


def _mi(ds: xr.Dataset) -> list[str]:
    curve = trained(ds)["mi_vs_distance"]  # (layer, sublayer, distance)
    out = []
    for sub in curve["sublayer"].values:
        c = curve.sel(sublayer=sub)
        name = {"attn": "MHA", "mlp": "MLP"}.get(str(sub), str(sub))
        if 1 not in c["distance"].values:
            continue
        at1 = c.sel(distance=1)
        if np.all(np.isnan(at1.values)):
            continue
        best = int(at1["layer"].values[int(np.nanargmax(at1.values))])
        out.append(f"{name}: the highest MI at distance 1 is in layer {_L(best)} "
                   f"({float(np.nanmax(at1.values)):.3f} nats); layer "
                   f"{_L(int(at1['layer'].values[0]))} has {float(at1.values[0]):.3f} nats.")
        far = c.where(c["distance"] >= 1).mean("distance", skipna=True)
        if far.sizes["layer"] > 1:
            first, rest = float(far.values[0]), float(np.nanmean(far.values[1:]))
            relation = "lower" if first < rest else "higher"
            out.append(f"{name}: averaged over distances >= 1, layer {_L(far['layer'].values[0])}"
                       f" has {relation} MI ({first:.3f} nats) than the other layers "
                       f"(mean {rest:.3f} nats).")
        valid = c["distance"].values[~np.all(np.isnan(c.values), axis=0)]
        dmax = int(valid.max()) if valid.size else 1
        if dmax > 1:
            ratio = c.sel(distance=dmax) / at1
            fastest = int(ratio["layer"].values[int(np.nanargmin(ratio.values))])
            out.append(f"{name}: MI falls off fastest with distance in layer {_L(fastest)} "
                       f"(MI at distance {dmax} is {float(np.nanmin(ratio.values)):.0%} of its "
                       "value at distance 1).")
    if "mi_null_level" in ds:
        null = float(np.nanmean(trained(ds)["mi_null_level"].values))
        out.append(f"Shuffled-pair null level: {null:.4f} nats on average (estimator bias "
                   "and noise at this sample size).")
    return out


def _moments(ds: xr.Dataset) -> list[str]:
    k = trained(ds)["excess_kurtosis"]  # (layer, sublayer, channel, position)
    med = k.median(("channel", "position"))
    out = []
    for sub in med["sublayer"].values:
        m = med.sel(sublayer=sub)
        top = int(m["layer"].values[int(np.nanargmax(m.values))])
        near = float((np.abs(k.sel(sublayer=sub)) < 1).mean())
        name = {"attn": "MHA", "mlp": "MLP"}.get(str(sub), str(sub))
        out.append(f"{name}: median excess kurtosis is highest in layer {_L(top)} "
                   f"({float(m.max()):.2f}); {near:.0%} of neurons have |excess kurtosis| < 1.")
    return out


def _qk(ds: xr.Dataset) -> list[str]:
    out = []
    share = ds["positive_share"].sel(model="trained").median("head")
    positive = [_L(layer) for layer, v in zip(share["layer"].values, share.values, strict=True)
                if v > 0.5]
    out.append(f"M_sym's spectrum is mostly positive (median positive share > 0.5) in "
               f"{len(positive)} of {share.sizes['layer']} layers"
               + (f": {', '.join(map(str, positive))}" if positive else "")
               + f"; range {float(share.min()):.2f}-{float(share.max()):.2f}.")
    if "random-init" in ds["model"].values:
        base = ds["positive_share"].sel(model="random-init").median("head")
        out.append(f"Random init gives {float(base.mean()):.2f} on average.")
    sym = ds["layer_symmetry"].sel(model="trained") if "layer_symmetry" in ds else None
    if sym is not None:
        out.append(f"Symmetry score 2s-1 of each layer's summed M: {float(sym[0]):.2f} in layer 1,"
                   f" {float(sym[-1]):.2f} in layer {sym.sizes['layer']} "
                   f"(0 for a random matrix).")
    wc = ds["weighted_cosine"].sel(model="trained").median("head")
    hi, lo = int(np.argmax(wc.values)), int(np.argmin(wc.values))
    out.append(f"Singular-value-weighted cosine of paired singular vectors: highest in layer "
               f"{_L(wc['layer'].values[hi])} ({float(wc.max()):.2f}), lowest in "
               f"layer {_L(wc['layer'].values[lo])} ({float(wc.min()):.2f}).")
    return out


def _angles(ds: xr.Dataset) -> list[str]:
    out = []
    shift = trained(ds)["layer_angle_shift"]  # (layer, variant)
    mean_attn = trained(ds)["layer_mean_angle_attention"]
    for variant in shift["variant"].values:
        s = shift.sel(variant=variant)
        similar = [_L(la) for la, v in zip(s["layer"].values, s.values, strict=True) if v < 0]
        dissimilar = [_L(la) for la, v in zip(s["layer"].values, s.values, strict=True) if v > 0]
        out.append(f"Angles ({variant} embeddings): attention goes to more similar patches than "
                   f"average (weighted mean angle below baseline) in layers "
                   f"{_list(similar)} and to less similar ones in layers {_list(dissimilar)}.")
        m = mean_attn.sel(variant=variant)
        above = [_L(la) for la, v in zip(m["layer"].values, m.values, strict=True) if v > 90]
        out.append(f"Angles ({variant}): the attention-weighted mean angle exceeds 90 degrees in "
                   f"{_list(above) if above else 'no layer'} (range "
                   f"{float(m.min()):.1f}-{float(m.max()):.1f} degrees).")
    if has_control(ds):
        control = next(v for v in ds["model"].values if v != "trained")
        ctrl = ds["layer_angle_shift"].sel(model=control)
        out.append(f"Random-init control: angle shift {float(ctrl.min()):+.1f} to "
                   f"{float(ctrl.max()):+.1f} degrees across layers.")
    return out


def _list(layers: list[int]) -> str:
    return ", ".join(map(str, layers)) if layers else "none"
