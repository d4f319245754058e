"""Helpers shared by the neuron accumulators of :mod:`vitprobe.stats` (private to it):
reading a cache, coordinates, attributes. (The threading helpers and the non-finite
check every accumulator shares are public in :mod:`vitprobe.record`.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from vitprobe.errors import InputShapeError, MissingSiteError, NonFiniteInputError
from vitprobe.record.accumulator import nonfinite_rows
from vitprobe.stats.layout import Group, NeuronLayout, site_name

__all__ = [
    "LAYER_ATTRS",
    "SUBLAYER_ATTRS",
    "add_ones",
    "as_float32_numpy",
    "group_axes",
    "groups_attr",
    "layout_attrs",
    "paired_samples",
    "parse_groups_attr",
    "patch_activations",
    "position_coords",
]

LAYER_ATTRS = {"long_name": "layer (0-based)",
               "description": "block index, 0-based in code; figures label layers 1..L"}
SUBLAYER_ATTRS = {"long_name": "sublayer",
                  "description": "attn: the MHA sublayer's output (its contribution to the "
                                 "residual stream); mlp: the MLP sublayer's output"}


def patch_activations(cache: Mapping[str, Any], layout: NeuronLayout, group: Group,
                      channels: torch.Tensor | None = None) -> torch.Tensor:
    """(batch, P, C) patch-token activations of one (layer, sublayer) from a cache."""
    site = site_name(*group)
    if site not in cache:
        raise MissingSiteError(f"recorded batch has no site {site!r} (has {sorted(cache)[:6]}...)")
    t = cache[site]
    if not isinstance(t, torch.Tensor):
        t = torch.as_tensor(np.asarray(t))
    if t.ndim != 3 or t.shape[-1] != layout.d_model:
        raise InputShapeError(f"{site}: expected (batch, tokens, {layout.d_model}), "
                              f"got {tuple(t.shape)}")
    ti = layout.token_index
    if ti.size and np.array_equal(ti, np.arange(ti[0], ti[0] + ti.size)):
        x = t[:, int(ti[0]) : int(ti[0]) + ti.size]  # a view: no copy
    else:
        x = t.index_select(1, torch.as_tensor(ti, device=t.device))
    if channels is not None:
        x = x.index_select(2, channels.to(t.device))
    return x


def add_ones(counts: torch.Tensor, cells: torch.Tensor) -> None:
    """``counts.view(-1)[cells] += 1`` with repeated cells adding up, in place: the
    counting of the torch (and accelerator) paths. ``index_add_`` of a broadcast one
    needs no buffer of ones and, unlike ``bincount``, never makes the host wait for the
    device to size its output."""
    flat = cells.reshape(-1).to(counts.device)
    one = torch.ones((), dtype=counts.dtype, device=counts.device)
    counts.view(-1).index_add_(0, flat, one.expand(flat.numel()))


def as_float32_numpy(t: torch.Tensor) -> np.ndarray:
    """A CPU float32 numpy view (copy when the dtype or layout requires)."""
    t = t.detach()
    if t.dtype != torch.float32:
        t = t.float()
    return t.numpy()  # strided views are fine for numpy


def group_axes(groups: Sequence[Group]) -> tuple[list[int], list[str]]:
    """Sorted layers and sublayers (in canonical order) covered by ``groups``."""
    layers = sorted({g[0] for g in groups})
    subs = [s for s in ("attn", "mlp") if s in {g[1] for g in groups}]
    return layers, subs


def position_coords(layout: NeuronLayout) -> dict[str, Any]:
    """Coordinates of the ``position`` dimension."""
    return {
        "position": ("position", np.arange(layout.n_positions),
                     {"long_name": "patch position", "description": "flat row-major patch index"}),
        "row": ("position", layout.rows, {"long_name": "patch row", "units": "patches"}),
        "col": ("position", layout.cols, {"long_name": "patch column", "units": "patches"}),
        "position_distance": ("position", layout.distance,
                              {"long_name": "distance from the centre patch", "units": "patches",
                               "description": "Euclidean distance of the position from the "
                                              "central patch, in patch units (exact)"}),
        "position_distance_bin": ("position", layout.distance_bin,
                                  {"long_name": "rounded distance from the centre patch",
                                   "units": "patches",
                                   "description": "position_distance rounded to the nearest "
                                                  "integer: the distance coordinate of the "
                                                  "MI-against-distance curves"}),
    }


def layout_attrs(layout: NeuronLayout) -> dict[str, Any]:
    return {
        "grid_rows": layout.grid[0], "grid_cols": layout.grid[1],
        "centre_row": layout.centre[0], "centre_col": layout.centre[1],
        "centre_convention": "central neuron at patch (rows // 2, cols // 2), 0-based; on "
                             "even grids the lower-right of the four central patches",
        "n_layers": layout.n_layers, "d_model": layout.d_model,
        "layer_labels": "layers are 0-based in the data; figures label them 1..L",
    }


def groups_attr(groups: Sequence[Group]) -> str:
    """Dataset attr listing the measured groups: ``"0.attn,0.mlp,1.attn"``."""
    return ",".join(f"{layer}.{s}" for layer, s in groups)


def parse_groups_attr(text: str) -> list[Group]:
    out = []
    for item in filter(None, text.split(",")):
        layer, s = item.split(".")
        out.append((int(layer), s))
    return out


def paired_samples(x: Any, y: Any) -> tuple[Any, Any, tuple[int, ...]]:
    """Validated (..., N) paired samples of the MI estimators, flattened to (P, N) rows,
    and the leading shape. Tensors stay tensors (on their device); anything else becomes
    a numpy array (lists included).

    Raises:
        InputShapeError: shapes differ, or no sample axis.
        NonFiniteInputError: NaN or inf (quantile bins, ranks and neighbours are undefined
            for them), naming the first row that holds one.
    """
    if not isinstance(x, torch.Tensor):
        x = np.asarray(x)
    if not isinstance(y, torch.Tensor):
        y = np.asarray(y)
    if tuple(x.shape) != tuple(y.shape):
        raise InputShapeError(f"x and y must have the same shape, got {tuple(x.shape)} and "
                              f"{tuple(y.shape)}")
    if len(x.shape) == 0:
        raise InputShapeError("need samples along the last axis")
    lead = tuple(x.shape[:-1])
    n = x.shape[-1]
    xs, ys = x.reshape(-1, n), y.reshape(-1, n)
    for name, v in (("x", xs), ("y", ys)):
        # the runner's screen of recorded batches: one sum, per-row test only on failure
        # (torch takes no negative strides: a reversed view is copied)
        bad = nonfinite_rows(v if isinstance(v, torch.Tensor)
                             else torch.as_tensor(np.ascontiguousarray(v)))
        if bad is not None and bool(bad.any()):
            bad = bad.cpu().numpy()
            row = int(np.flatnonzero(bad)[0])
            index = tuple(int(i) for i in np.unravel_index(row, lead))
            where = f" (first at index {index} of the leading axes)" if lead else ""
            raise NonFiniteInputError(
                f"{name} holds NaN or inf{where}, in {int(bad.sum())} of {len(bad)} rows: "
                "drop those samples first")
    return xs, ys, lead
