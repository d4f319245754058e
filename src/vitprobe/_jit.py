"""Compiled CPU kernels through numba, with the numpy/torch reference as fallback.

The hot CPU loops of the accumulators (binning + counting of joint histograms, the
per-pair sums of the angle accumulator) are written once as plain Python loops and
compiled by numba (``nogil``: the accumulators run groups on threads, so several
kernels run at once). Every kernel has a vectorised numpy or torch reference that the
tests compare it with.

``VITPROBE_JIT=0`` in the environment (or numba not installed) selects the reference
paths: slower, same numbers. Compiled code is cached on disk (numba's ``cache=True``),
so only the first run on a machine pays the compilation (a few seconds).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

__all__ = ["add8_f32", "bits_from_f32", "f32_from_bits", "jit_enabled", "njit",
           "ordered_bits"]

F = TypeVar("F", bound=Callable[..., Any])

try:  # numba is a dependency, but a platform without its wheels still works
    import numba as _numba
except ImportError:  # pragma: no cover - exercised only where numba is missing
    _numba = None


def jit_enabled() -> bool:
    """True when the compiled kernels are used (numba present and ``VITPROBE_JIT != 0``)."""
    return _numba is not None and os.environ.get("VITPROBE_JIT", "1") != "0"


def njit(fn: F | None = None, *, reassoc: bool = False) -> Any:
    """Compile ``fn`` lazily (at its first call) without the GIL; identity without numba.

    ``reassoc=True`` lets the compiler reorder floating-point sums (``fastmath``
    reassociation only: NaN and infinity keep their IEEE meaning), which is what lets
    reductions such as ``total += x[j]`` use SIMD lanes. The sums stay deterministic
    for a given machine; their rounding differs from a left-to-right sum.
    Usable as ``@njit`` or ``@njit(reassoc=True)``.
    """
    if fn is None:
        return lambda f: njit(f, reassoc=reassoc)
    if _numba is None:
        return fn
    flags = {"reassoc", "nsz"} if reassoc else False
    return _numba.njit(nogil=True, cache=True, fastmath=flags)(fn)


if _numba is not None:
    from llvmlite import ir as _ir
    from numba.core import types as _types
    from numba.extending import intrinsic as _intrinsic

    @_intrinsic
    def f32_from_bits(typingctx: Any, bits: Any) -> Any:
        """The float32 whose IEEE bits are the int32 ``bits`` (a free bit cast, usable in
        vectorised loops: ``f32_from_bits((k + 127) << 23) == 2.0 ** k``)."""
        if isinstance(bits, _types.Integer):
            def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
                return builder.bitcast(args[0], _ir.FloatType())

            return _types.float32(_types.int32), codegen
        return None

    @_intrinsic
    def bits_from_f32(typingctx: Any, value: Any) -> Any:
        """The int32 holding the IEEE bits of the float32 ``value`` (a free bit cast, the
        inverse of :func:`f32_from_bits`)."""
        if value == _types.float32:
            def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
                return builder.bitcast(args[0], _ir.IntType(32))

            return _types.int32(_types.float32), codegen
        return None

    @_intrinsic
    def add8_f32(typingctx: Any, dst: Any, dst_at: Any, src: Any, src_at: Any) -> Any:
        """``dst.flat[dst_at:dst_at + 8] += src.flat[src_at:src_at + 8]`` as one 8-lane
        vector load, add and store, for C-contiguous float32 arrays (no bounds check).

        numba's compiler leaves such an update of a row picked by a runtime index (a
        histogram row) as eight scalar read-modify-writes: it cannot prove that ``dst``
        and ``src`` do not overlap. The caller guarantees they do not."""
        def ok(a: Any) -> bool:
            return isinstance(a, _types.Array) and a.dtype == _types.float32 \
                and a.layout == "C"

        if not (ok(dst) and ok(src) and isinstance(dst_at, _types.Integer)
                and isinstance(src_at, _types.Integer)):
            return None

        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            vec = _ir.VectorType(_ir.FloatType(), 8).as_pointer()

            def at(kind: Any, array: Any, offset: Any) -> Any:
                data = context.make_array(kind)(context, builder, array).data
                return builder.bitcast(builder.gep(data, [offset]), vec)

            d = at(signature.args[0], args[0], args[1])
            s = at(signature.args[2], args[2], args[3])
            builder.store(builder.fadd(builder.load(d, align=4), builder.load(s, align=4)),
                          d, align=4)
            return context.get_dummy_value()

        return _types.none(dst, _types.intp, src, _types.intp), codegen
else:  # pragma: no cover - only where numba is missing (the kernels then never run)
    import struct as _struct

    def f32_from_bits(bits: int) -> float:
        return _struct.unpack("<f", _struct.pack("<i", int(bits)))[0]

    def bits_from_f32(value: float) -> int:
        return _struct.unpack("<i", _struct.pack("<f", float(value)))[0]

    def add8_f32(dst: Any, dst_at: int, src: Any, src_at: int) -> None:
        dst.reshape(-1)[dst_at:dst_at + 8] += src.reshape(-1)[src_at:src_at + 8]


@njit
def ordered_bits(bits: np.int32) -> np.int32:
    """IEEE float32 bits (:func:`bits_from_f32`) made monotone: as int32 they order as the
    floats do (-0 just below +0). Negative values' magnitude bits are flipped; applied
    twice it gives the bits back. Integer maxima vectorise where float maxima, with their
    NaN ordering, do not: ``f32_from_bits(ordered_bits(max over ordered_bits(bits)))``."""
    return bits ^ ((bits >> np.int32(31)) & np.int32(2147483647))
