"""One shape for every results file: the ``model`` axis, variant names, plot styles.

Every Dataset that vitprobe writes under ``results/`` has a leading ``model``
dimension, even when only one model ran: the model under study first (normally
``"trained"``), then its controls (``"random-init"``). Figures, findings, the report
and ``vitprobe compare`` read a file through :func:`split_models` /
:func:`main_model` / :func:`controls` instead of spelling variant names, and draw
each variant with :func:`model_style`, so a new control needs no change there.

>>> import xarray as xr
>>> ds = stack_models({TRAINED: xr.Dataset({"a": 1.0}), RANDOM_INIT: xr.Dataset({"a": 2.0})})
>>> [str(v) for v in ds[MODEL_DIM].values]
['trained', 'random-init']
>>> float(main_model(ds)["a"]), list(controls(ds))
(1.0, ['random-init'])
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import xarray as xr

from vitprobe.errors import ResultsError

__all__ = [
    "CONTROLS",
    "MODEL_DIM",
    "RANDOM_INIT",
    "TRAINED",
    "ModelStyle",
    "check_schema",
    "controls",
    "has_control",
    "main_model",
    "model_style",
    "split_models",
    "stack_models",
]

#: the dimension that holds the model under study and its controls, in every file
MODEL_DIM = "model"
#: the model under study with its trained weights
TRAINED = "trained"
#: the same architecture, randomly initialised (seeded): the control
RANDOM_INIT = "random-init"
#: the controls a study can run, in the order they follow the main model
CONTROLS = (RANDOM_INIT,)

#: per-model attributes that become coordinates along ``model`` when stacking
PER_MODEL_ATTRS = ("model_spec", "model_source")


def stack_models(parts: Mapping[str, xr.Dataset]) -> xr.Dataset:
    """Stack per-model Datasets along a new leading ``model`` dimension.

    ``parts`` maps a variant name to its Dataset, the main model first. Attributes
    that differ between the parts and are listed in ``PER_MODEL_ATTRS`` become
    coordinates along ``model``; other attributes are kept where all parts agree.
    A single part still gets the dimension (length 1), so every file has one shape.

    Raises:
        ResultsError: ``parts`` is empty.
    """
    if not parts:
        raise ResultsError("no model results to stack")
    labels = list(parts)
    per_model = {k: [str(ds.attrs.get(k, "")) for ds in parts.values()]
                 for k in PER_MODEL_ATTRS if any(k in ds.attrs for ds in parts.values())}
    pieces = [ds.expand_dims({MODEL_DIM: [label]}) for label, ds in parts.items()]
    combined = (pieces[0] if len(pieces) == 1 else
                xr.concat(pieces, dim=MODEL_DIM, data_vars="all", coords="different",
                          compat="equals", join="outer", combine_attrs="drop_conflicts"))
    # keep integer dtypes: an outer join only fills where coordinates differ
    for name, var in pieces[0].data_vars.items():
        if combined[name].dtype != var.dtype and not combined[name].isnull().any():
            combined[name] = combined[name].astype(var.dtype)
    combined = combined.assign_coords({MODEL_DIM: (MODEL_DIM, labels, {
        "long_name": "model weights",
        "description": "the model under study first, then its controls"})})
    for key, values in per_model.items():
        combined = combined.assign_coords({key: (MODEL_DIM, values)})
        combined.attrs.pop(key, None)
    combined.attrs["models"] = labels
    return combined


def split_models(ds: xr.Dataset) -> tuple[xr.Dataset, dict[str, xr.Dataset]]:
    """``(main, {control name: Dataset})``: the slices of a results Dataset by model."""
    check_schema(ds)
    names = [str(v) for v in ds[MODEL_DIM].values]
    main = ds.isel({MODEL_DIM: 0})
    return main, {name: ds.isel({MODEL_DIM: i}) for i, name in enumerate(names) if i > 0}


def main_model(ds: xr.Dataset) -> xr.Dataset:
    """The first model's slice (the model under study)."""
    return split_models(ds)[0]


def controls(ds: xr.Dataset) -> dict[str, xr.Dataset]:
    """The controls' slices, by name, in file order."""
    return split_models(ds)[1]


def has_control(ds: xr.Dataset) -> bool:
    return MODEL_DIM in ds.dims and ds.sizes[MODEL_DIM] > 1


def check_schema(ds: xr.Dataset) -> None:
    """Raise :class:`ResultsError` unless ``ds`` has the ``model`` dimension first.

    Raises:
        ResultsError: no ``model`` dimension (a file written by an older vitprobe, or
            not a vitprobe result).
    """
    if MODEL_DIM not in ds.dims:
        raise ResultsError(
            f"results Dataset {ds.attrs.get('analysis', '')!r} has no {MODEL_DIM!r} "
            "dimension; it was not written by this version of vitprobe (rerun the analysis)")


@dataclass(frozen=True)
class ModelStyle:
    """How one model variant is drawn: matplotlib colour, line style, alpha, label."""

    color: str | None
    linestyle: str
    alpha: float
    label: str
    #: True for the model under study (its own colours per layer are kept)
    is_main: bool


#: controls in grey shades, dashed: distinct from the main model's colour maps
_CONTROL_COLORS = ("0.45", "0.65", "0.3")


def model_style(ds_or_names: xr.Dataset | list[str], name: str) -> ModelStyle:
    """The style of variant ``name`` among the models of a Dataset (or a name list)."""
    names = ([str(v) for v in ds_or_names[MODEL_DIM].values]
             if isinstance(ds_or_names, xr.Dataset) else list(ds_or_names))
    index = names.index(name)
    if index == 0:
        return ModelStyle(None, "-", 1.0, name, True)
    color = _CONTROL_COLORS[(index - 1) % len(_CONTROL_COLORS)]
    return ModelStyle(color, "--", 0.9, name, False)
