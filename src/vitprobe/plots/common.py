"""How every figure reads the ``model`` axis: through :mod:`vitprobe.schema` only.

Figures accept a results file (``model`` dimension first, main model then controls)
or a bare accumulator Dataset (one model, no ``model`` dimension: what
``acc.result()`` returns), which is treated as the main model alone.
"""

from __future__ import annotations

import io
import os
import warnings
from typing import TYPE_CHECKING

import xarray as xr

from vitprobe.cache import atomic_write
from vitprobe.schema import MODEL_DIM, TRAINED, model_style, split_models, stack_models

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["SUBLAYER_TITLES", "as_results", "freeze_layout", "model_color", "model_label",
           "model_names", "save_figure", "split"]

SUBLAYER_TITLES = {"attn": "MHA", "mlp": "MLP"}


def as_results(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with the ``model`` dimension (a bare one-model Dataset becomes the main model)."""
    return ds if MODEL_DIM in ds.dims else stack_models({TRAINED: ds})


def split(ds: xr.Dataset) -> tuple[xr.Dataset, dict[str, xr.Dataset]]:
    """``(main, {control: Dataset})`` of a results or bare Dataset (:func:`split_models`)."""
    return split_models(as_results(ds))


def model_names(ds: xr.Dataset) -> list[str]:
    """The variants along ``model``, main model first."""
    return [str(v) for v in as_results(ds)[MODEL_DIM].values]


def model_color(ds: xr.Dataset, name: str, main_color: str) -> str:
    """``main_color`` for the model under study, the control's grey shade otherwise."""
    style = model_style(model_names(ds), name)
    return main_color if style.is_main or style.color is None else style.color


def model_label(ds: xr.Dataset, name: str) -> str:
    """``"trained (timm:vit_base_patch16_224)"``: the variant and, where saved, its spec."""
    full = as_results(ds)
    if "model_spec" in full.coords and MODEL_DIM in full["model_spec"].dims:
        spec = str(full["model_spec"].sel({MODEL_DIM: name}).values)
    else:
        spec = str(full.attrs.get("model_spec", ""))
    return f"{name} ({spec})" if spec else name


def freeze_layout(fig: Figure, dpi: float) -> Figure:
    """Run ``fig``'s layout engine (constrained layout) once at ``dpi``, then drop it.

    ``savefig`` on a figure with a layout engine draws it twice: a dry run that lays it
    out (measuring every tick label of every panel) and the real draw. With the layout
    frozen there is one draw: the same pixels (checked on the report's figures) in about
    three quarters of the time for the many-panel ones. Save at the same ``dpi``.
    """
    engine = fig.get_layout_engine()
    if engine is None:
        return fig
    shown = fig.dpi
    fig.set_dpi(dpi)  # text extents in pixels: lay out as the file will be drawn
    engine.execute(fig)
    fig.set_layout_engine(None)
    fig.set_dpi(shown)
    return fig


def save_figure(fig: Figure, dest: str | os.PathLike[str] | io.BytesIO, *, dpi: float = 110,
                fmt: str = "png", close: bool = True) -> None:
    """Write ``fig`` the one way every vitprobe figure is written.

    The layout is frozen at ``dpi`` first (:func:`freeze_layout`: one draw instead of
    two), constrained layout's warnings on tiny grids are silenced, the file carries no
    creation date or software version (the same figure gives the same bytes), and a
    path is written atomically (an interrupted save leaves no half-written file).
    ``fmt``: ``"png"`` (raster at ``dpi``) or ``"pdf"`` (vector). ``close``: remove the
    figure from pyplot's registry afterwards (figures from ``pyplot.subplots`` stay
    there otherwise); keep it open to save it again in another format.
    """
    metadata = {"Software": None} if fmt == "png" else {"CreationDate": None}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # constrained layout on tiny grids
        freeze_layout(fig, dpi)
        if isinstance(dest, io.BytesIO):
            fig.savefig(dest, format=fmt, dpi=dpi, metadata=metadata)
        else:
            with atomic_write(dest) as tmp:
                fig.savefig(tmp, format=fmt, dpi=dpi, metadata=metadata)
    if close:
        import matplotlib.pyplot as plt

        plt.close(fig)
