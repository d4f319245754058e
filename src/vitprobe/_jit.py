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

__all__ = ["f32_from_bits", "jit_enabled", "njit"]

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
else:  # pragma: no cover - only where numba is missing (the kernels then never run)
    import struct as _struct

    def f32_from_bits(bits: int) -> float:
        return _struct.unpack("<f", _struct.pack("<i", int(bits)))[0]
