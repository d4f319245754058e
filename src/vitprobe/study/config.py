"""What a study run is asked to do: one dataclass, shared by the CLI and the Python API."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vitprobe.defaults import DEFAULT_IMAGES, DEFAULT_MODEL, DEMO_N_IMAGES
from vitprobe.errors import VitprobeError

#: every analysis, in report order; ``qk`` needs no images
ANALYSES = ("moments", "mi", "angles", "qk")
CONTROLS = ("random-init",)
DTYPES = ("float32", "bfloat16", "float16")



def parse_bytes(text: str | int | float) -> int:
    """``"4GB"``, ``"512MiB"``, ``2e9`` -> bytes."""
    if isinstance(text, int | float):
        return int(text)
    try:
        return int(float(text))  # plain numbers, also "2e9"
    except ValueError:
        pass
    match = re.fullmatch(r"\s*([\d.]+)\s*([kmgt]?i?b?)\s*", str(text).lower())
    if not match:
        raise VitprobeError(f"cannot read memory size {text!r} (examples: 4GB, 512MiB)")
    number, unit = float(match.group(1)), match.group(2).rstrip("b")
    base = 1024 if unit.endswith("i") else 1000
    power = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}[unit.rstrip("i")]
    return int(number * base**power)


@dataclass
class StudyConfig:
    """Everything ``vitprobe run`` needs; defaults give the offline demo.

    Attributes:
        model: model spec (see :func:`vitprobe.load_model`).
        images: image source spec (see :func:`vitprobe.data.open_images`).
        n_images: images in the random subset (None: the demo size for ``demo``,
            else every image).
        seed: picks the subset (and seeds random-init controls).
        out: results folder.
        analyses: subset of :data:`ANALYSES`.
        control: ``"random-init"`` runs the same study on a randomly initialised
            copy and overlays it in every figure; None skips it.
        device: ``cpu``, ``cuda`` or ``cuda:N`` (under torchrun, ``cuda`` means
            each process's own GPU).
        dtype: the model's compute dtype (autocast); accumulators stay float32/64.
        batch_size, workers: data loading.
        memory_budget: bytes the mutual-information counts may take per pass.
        calibration_images: images of the calibration pass (bin edges, mean token).
        checkpoint_every_s: seconds between checkpoints.
        mi_channels: channels per sublayer for the MI analysis (None: all).
        mi_bins: quantile bins per neuron for MI (None: chosen from n_images).
        checkpoint: local weights file for ``model``.
        pretrained: False studies a randomly initialised model as the main model.
    """

    model: str = DEFAULT_MODEL
    images: str = DEFAULT_IMAGES
    n_images: int | None = None
    seed: int = 0
    out: Path = Path("vitprobe-out")
    analyses: tuple[str, ...] = ANALYSES
    control: str | None = None
    device: str = "cpu"
    dtype: str = "float32"
    batch_size: int = 32
    workers: int = 2
    memory_budget: int = 4 * 1000**3
    calibration_images: int = 256
    checkpoint_every_s: float = 300.0
    mi_channels: int | None = None
    mi_bins: int | None = None
    checkpoint: str | None = None
    pretrained: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.analyses = tuple(self.analyses)
        unknown = [a for a in self.analyses if a not in ANALYSES]
        if unknown or not self.analyses:
            raise VitprobeError(f"unknown analyses {unknown or '(none)'}; choose from "
                                f"{', '.join(ANALYSES)}")
        if self.control not in (None, *CONTROLS):
            raise VitprobeError(f"unknown control {self.control!r}; choose from {CONTROLS}")
        if self.dtype not in DTYPES:
            raise VitprobeError(f"unknown dtype {self.dtype!r}; choose from {DTYPES}")
        if self.batch_size < 1:
            raise VitprobeError(f"batch size must be >= 1, got {self.batch_size}")
        self.memory_budget = parse_bytes(self.memory_budget)
        if self.n_images is None and self.images == DEFAULT_IMAGES:
            self.n_images = DEMO_N_IMAGES

    @property
    def is_demo(self) -> bool:
        return self.images.split("?")[0] == "demo"

    @property
    def variants(self) -> tuple[str, ...]:
        """``("trained",)`` or ``("trained", "random-init")``."""
        return ("trained",) + ((self.control,) if self.control else ())

    @property
    def image_analyses(self) -> tuple[str, ...]:
        return tuple(a for a in self.analyses if a != "qk")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["out"] = str(self.out)
        d["analyses"] = list(self.analyses)
        return d

    def fingerprint(self) -> str:
        """What must not change between a run and its resumption."""
        keys = ("model", "images", "n_images", "seed", "analyses", "control", "batch_size",
                "calibration_images", "mi_channels", "mi_bins", "checkpoint", "memory_budget",
                "pretrained")
        d = self.to_dict()
        blob = json.dumps({k: d[k] for k in keys}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]
