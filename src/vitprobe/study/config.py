"""What a study run is asked to do: one dataclass, shared by the CLI and the Python API."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from vitprobe.defaults import DEFAULT_IMAGES, DEFAULT_MODEL, DEMO_N_IMAGES
from vitprobe.errors import ConfigurationError
from vitprobe.resources import auto_memory_budget, check_device
from vitprobe.schema import CONTROLS, RANDOM_INIT, TRAINED

#: analyses of a default run, in report order (see vitprobe.analyses.REGISTRY for all)
DEFAULT_ANALYSES = ("moments", "mi", "bowtie", "angles", "qk", "salience")
DTYPES = ("float32", "bfloat16", "float16")
#: settings that must not change between a run and its resumption
FINGERPRINT_KEYS = ("model", "images", "n_images", "seed", "analyses", "control", "batch_size",
                    "calibration_images", "mi_channels", "mi_bins", "checkpoint",
                    "memory_budget", "pretrained", "options")


def _is_number(text: str) -> bool:
    """A plain number, without a unit (``"8"``, ``"0.5"``, ``"2e9"``)."""
    try:
        float(text)
    except ValueError:
        return False
    return True


def parse_bytes(text: str | int | float) -> int:
    """``"4GB"``, ``"512MiB"``, ``2e9`` -> bytes.

    Raises:
        ConfigurationError: not a memory size.
    """
    if isinstance(text, int | float):
        return int(text)
    if _is_number(text):  # plain numbers, also "2e9"
        return int(float(text))
    match = re.fullmatch(r"\s*([\d.]+)\s*([kmgt]?i?b?)\s*", str(text).lower())
    if not match:
        raise ConfigurationError(f"cannot read memory size {text!r} (examples: 4GB, 512MiB)")
    number, unit = float(match.group(1)), match.group(2).rstrip("b")
    base = 1024 if unit.endswith("i") else 1000
    power = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}[unit.rstrip("i")]
    return int(number * base**power)


#: below this a unitless memory budget is taken for a forgotten unit (no MI group fits)
_LEAST_BUDGET = 1 << 20


@dataclass(frozen=True)
class StudyConfig:
    """Everything ``vitprobe run`` needs; defaults give the offline demo.

    Frozen: the study never changes what the caller passed (use
    :func:`dataclasses.replace` for a variant).

    Attributes:
        model: model spec (see :func:`vitprobe.load_model`).
        images: image source spec (see :func:`vitprobe.data.open_images`).
        n_images: images in the seeded random subset (None: the demo size for the
            built-in demo, else every image of the source).
        seed: picks the subset and the processing order; seeds random-init controls.
        out: results folder.
        analyses: names from :data:`vitprobe.analyses.REGISTRY`.
        control: ``"random-init"`` runs every analysis on a randomly initialised copy
            too (overlaid in every figure); None skips it.
        device: ``cpu``, ``cuda`` or ``cuda:N`` (under torchrun, ``cuda`` means each
            process's own GPU).
        dtype: the model's compute dtype (autocast); accumulators stay float32/64.
        batch_size: images per forward.
        workers: image decoding processes; None: 2 on CPU, one per free core on a GPU
            (:func:`vitprobe.resources.loader_settings`).
        memory_budget: bytes the mutual-information counts may take per pass, and
            separately the calibration batches an analysis keeps to count them in the
            same pass (above it they are forwarded again:
            :func:`vitprobe.analyses.base.one_pass_calibration`); ``"auto"``: 4 GB on
            a CPU, 30 % of the GPU's memory on CUDA
            (:func:`vitprobe.resources.auto_memory_budget`).
        calibration_images: images (a random sample: the first of the seeded
            processing order) that fix bin edges, ranges and the mean token.
        checkpoint_every_s: seconds between checkpoints.
        mi_channels: channels per sublayer for the MI analysis (None: all).
        mi_bins: quantile bins per neuron for MI (None: chosen from n_images).
        checkpoint: local weights file for ``model``.
        pretrained: False studies a randomly initialised model as the main model.
        options: further analysis options by name (see each analysis).
        resume: continue the unfinished run in ``out``.
        force: replace the run in ``out`` (only what a vitprobe manifest says is a run's).
        pdf: write PDF figures beside the PNGs.
    """

    model: str = DEFAULT_MODEL
    images: str = DEFAULT_IMAGES
    n_images: int | None = None
    seed: int = 0
    out: Path = Path("vitprobe-out")
    analyses: tuple[str, ...] = DEFAULT_ANALYSES
    control: str | None = RANDOM_INIT
    device: str = "cpu"
    dtype: str = "float32"
    batch_size: int = 32
    workers: int | None = None
    memory_budget: int | str = "auto"
    calibration_images: int = 256
    checkpoint_every_s: float = 300.0
    mi_channels: int | None = None
    mi_bins: int | None = None
    checkpoint: str | None = None
    pretrained: bool = True
    options: dict[str, Any] = field(default_factory=dict)
    resume: bool = False
    force: bool = False
    pdf: bool = False

    def __post_init__(self) -> None:
        from vitprobe.analyses import REGISTRY

        set_ = object.__setattr__  # frozen: normalise once, here
        set_(self, "out", Path(self.out))
        set_(self, "analyses", tuple(dict.fromkeys(self.analyses)))
        check_device(self.device)  # before the budget: "auto" asks the device
        raw_budget = self.memory_budget
        set_(self, "memory_budget", auto_memory_budget(self.device)
             if str(raw_budget).strip().lower() == "auto" else parse_bytes(raw_budget))
        set_(self, "options", dict(self.options))
        unknown = [a for a in self.analyses if a not in REGISTRY]
        if unknown or not self.analyses:
            raise ConfigurationError(f"unknown analyses {unknown or '(none)'}; choose from "
                                     f"{', '.join(REGISTRY)}")
        if self.control == "none":  # as on the command line (--control none)
            set_(self, "control", None)
        if self.control not in (None, *CONTROLS):
            raise ConfigurationError(f"unknown control {self.control!r}; choose from "
                                     f"{', '.join(CONTROLS)} or none")
        if self.dtype not in DTYPES:
            raise ConfigurationError(
                f"unknown dtype {self.dtype!r}; choose from {', '.join(DTYPES)}")
        for name in ("batch_size", "calibration_images"):
            if getattr(self, name) < 1:
                raise ConfigurationError(f"{name.replace('_', '-')} must be >= 1, "
                                         f"got {getattr(self, name)}")
        if self.workers is not None and self.workers < 0:
            raise ConfigurationError(f"workers must be >= 0, got {self.workers}")
        if self.n_images is not None and self.n_images < 1:
            raise ConfigurationError(f"n-images must be >= 1, got {self.n_images}")
        if self.seed < 0:  # numpy's generators take non-negative seeds only
            raise ConfigurationError(f"seed must be >= 0, got {self.seed}")
        for name, least in (("mi_channels", 1), ("mi_bins", 2)):
            value = getattr(self, name)
            if value is not None and value < least:
                raise ConfigurationError(
                    f"{name.replace('_', '-')} must be >= {least}, got {value}")
        if self.memory_budget < _LEAST_BUDGET and (isinstance(raw_budget, int | float)
                                                   or _is_number(raw_budget)):
            # "--memory-budget 8" or "0.5" meant gigabytes, not bytes
            raise ConfigurationError(
                f"memory budget {raw_budget!r} is {self.memory_budget} bytes (a number without "
                f"a unit is bytes); write the unit, e.g. {raw_budget}GB")
        if self.memory_budget <= 0:
            raise ConfigurationError(f"memory budget must be positive, got {self.memory_budget}")
        if self.checkpoint_every_s < 0:  # 0: after every batch
            raise ConfigurationError("checkpoint interval must be >= 0 seconds")
        if self.resume and self.force:
            raise ConfigurationError("--resume continues a run and --force replaces it: pass one")
        if self.n_images is None and self.images == DEFAULT_IMAGES:
            set_(self, "n_images", DEMO_N_IMAGES)

    @property
    def is_demo(self) -> bool:
        return self.images.split("?")[0] == "demo"

    @property
    def variants(self) -> tuple[str, ...]:
        """The models of the run: the main model, then the control if any."""
        main = TRAINED if self.pretrained else RANDOM_INIT
        return (main,) + ((self.control,) if self.control and self.control != main else ())

    def analysis_options(self) -> dict[str, Any]:
        """Options the analyses read (the MI settings plus ``options``)."""
        return {"mi_channels": self.mi_channels, "mi_bins": self.mi_bins} | self.options

    def with_(self, **changes: Any) -> StudyConfig:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["out"] = str(self.out)
        d["analyses"] = list(self.analyses)
        return d

    def fingerprint(self) -> str:
        """What must not change between a run and its resumption."""
        blob = json.dumps(self._fingerprinted(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def _fingerprinted(self) -> dict[str, Any]:
        d = self.to_dict()
        return json.loads(json.dumps({k: d[k] for k in FINGERPRINT_KEYS}, default=str))

    def differences(self, saved: Mapping[str, Any]) -> list[str]:
        """``"name: then -> now"`` for each fingerprinted setting that differs from
        ``saved`` (a manifest's ``config``)."""
        return [f"{k.replace('_', '-')}: {saved.get(k)!r} -> {v!r}"
                for k, v in self._fingerprinted().items() if saved.get(k) != v]

