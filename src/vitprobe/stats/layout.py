"""Where a model's neurons sit: layers, sublayers, channels and the patch grid.

A *neuron* (the poster's definition, as in CNNs) is one channel of a sublayer's output
at one patch position. The recorded sites are ``blocks.{l}.attn.out`` (the MHA
sublayer's contribution to the residual stream) and ``blocks.{l}.mlp.out`` (the
MLP's), of shape (batch, tokens, d_model) with the prefix tokens (class, distillation,
registers) first and the patch tokens after them in row-major order.

Centre convention: the central neuron sits at patch ``(rows // 2, cols // 2)``
(0-based). On an odd grid that is the exact centre; on an even grid (16 x 16 for
DINOv2-S/14 at 224 px) it is the lower-right of the four central patches, so
distances run to ``rows // 2`` upwards/leftwards and ``rows // 2 - 1``
downwards/rightwards. Distances are Euclidean, in patch units.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vitprobe.errors import ConfigurationError, InputShapeError

__all__ = ["SUBLAYERS", "NeuronLayout", "site_name"]

SUBLAYERS: tuple[str, ...] = ("attn", "mlp")

Group = tuple[int, str]


def site_name(layer: int, sublayer: str) -> str:
    """Recording site of a (0-based layer, sublayer): ``blocks.{layer}.{sublayer}.out``."""
    return f"blocks.{layer}.{sublayer}.out"


@dataclass(frozen=True, eq=False)
class NeuronLayout:
    """Shape of the neuron population of a ViT.

    Parameters
    ----------
    n_layers, d_model : int
        Blocks and channels per token.
    grid : (rows, cols)
        Patch grid.
    patch_token_index : (rows, cols) ints, optional
        Token index of each patch; default ``n_prefix + row * cols + col``.
    n_prefix : int
        Prefix tokens before the patches (used when ``patch_token_index`` is None).
    sublayers : tuple of str
        Sublayers to study, from ``("attn", "mlp")``.
    centre : (row, col), optional
        Override of the centre convention above.
    """

    n_layers: int
    d_model: int
    grid: tuple[int, int]
    patch_token_index: np.ndarray | None = None
    n_prefix: int = 0
    sublayers: tuple[str, ...] = SUBLAYERS
    centre: tuple[int, int] | None = None
    _pti: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        rows, cols = (int(g) for g in self.grid)
        object.__setattr__(self, "grid", (rows, cols))
        object.__setattr__(self, "sublayers", tuple(self.sublayers))
        if self.patch_token_index is None:
            pti = self.n_prefix + np.arange(rows * cols).reshape(rows, cols)
        else:
            pti = np.asarray(self.patch_token_index, dtype=np.int64)
            if pti.shape != (rows, cols):
                raise InputShapeError(
                    f"patch_token_index has shape {pti.shape}, grid is {(rows, cols)}")
        object.__setattr__(self, "_pti", pti.astype(np.int64))
        c = (rows // 2, cols // 2) if self.centre is None else tuple(int(v) for v in self.centre)
        if not (0 <= c[0] < rows and 0 <= c[1] < cols):
            raise ConfigurationError(f"centre {c} outside the {rows} x {cols} grid")
        object.__setattr__(self, "centre", c)
        for s in self.sublayers:
            if s not in SUBLAYERS:
                raise ConfigurationError(f"unknown sublayer {s!r}; expected one of {SUBLAYERS}")

    # -- construction ---------------------------------------------------------------
    @classmethod
    def from_model(cls, model: Any, *, sublayers: Sequence[str] = SUBLAYERS,
                   centre: tuple[int, int] | None = None) -> NeuronLayout:
        """Read ``n_layers``, ``d_model``, ``grid`` and ``patch_token_index`` of a
        :class:`~vitprobe.models.ProbedViT`."""
        return cls(n_layers=int(model.n_layers), d_model=int(model.d_model),
                   grid=tuple(model.grid), patch_token_index=np.asarray(model.patch_token_index),
                   n_prefix=int(getattr(model, "n_prefix", 0)), sublayers=tuple(sublayers),
                   centre=centre)

    def to_config(self) -> dict[str, Any]:
        """JSON-serialisable description (inverse of :meth:`from_config`)."""
        return {"n_layers": self.n_layers, "d_model": self.d_model, "grid": list(self.grid),
                "patch_token_index": self._pti.tolist(), "n_prefix": self.n_prefix,
                "sublayers": list(self.sublayers), "centre": list(self.centre)}

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> NeuronLayout:
        return cls(n_layers=cfg["n_layers"], d_model=cfg["d_model"], grid=tuple(cfg["grid"]),
                   patch_token_index=np.asarray(cfg["patch_token_index"]),
                   n_prefix=cfg.get("n_prefix", 0), sublayers=tuple(cfg["sublayers"]),
                   centre=tuple(cfg["centre"]))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NeuronLayout) and self.to_config() == other.to_config()

    __hash__ = None  # type: ignore[assignment]

    # -- geometry ---------------------------------------------------------------------
    @property
    def n_positions(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def token_index(self) -> np.ndarray:
        """(P,) token index of each flat patch position (row-major)."""
        return self._pti.reshape(-1)

    @property
    def rows(self) -> np.ndarray:
        return np.repeat(np.arange(self.grid[0]), self.grid[1])

    @property
    def cols(self) -> np.ndarray:
        return np.tile(np.arange(self.grid[1]), self.grid[0])

    @property
    def centre_position(self) -> int:
        """Flat index of the central patch."""
        return self.centre[0] * self.grid[1] + self.centre[1]

    @property
    def distance(self) -> np.ndarray:
        """(P,) Euclidean distance of each position from the centre, in patch units."""
        return np.hypot(self.rows - self.centre[0], self.cols - self.centre[1])

    @property
    def distance_bin(self) -> np.ndarray:
        """(P,) distance rounded to the nearest integer (half-way cases round to even);
        the abscissa of MI-against-distance curves."""
        return np.rint(self.distance).astype(np.int64)

    def groups(self, layers: Iterable[int] | None = None) -> list[Group]:
        """All (layer, sublayer) pairs in recording order."""
        ls = range(self.n_layers) if layers is None else layers
        return [(int(layer), s) for layer in ls for s in self.sublayers]

    def check_groups(self, groups: Iterable[Group] | None) -> list[Group]:
        gs = self.groups() if groups is None else [(int(g[0]), str(g[1])) for g in groups]
        for layer, s in gs:
            if not 0 <= layer < self.n_layers or s not in self.sublayers:
                raise ConfigurationError(f"group {(layer, s)} not in this layout")
        if len(set(gs)) != len(gs):
            raise ConfigurationError("duplicate (layer, sublayer) groups")
        return gs
