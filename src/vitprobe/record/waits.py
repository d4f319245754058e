"""Finding the places where code would make the host wait for an accelerator.

On a GPU the host queues kernels and goes on; reading a value back (``.item()``,
``bool(t)``, ``.tolist()``, ``.cpu()``), an op whose output size depends on the values
(``nonzero``, ``bincount``, ``unique``, boolean indexing) or a blocking copy from host
memory (``torch.as_tensor(array, device=...)``, ``t.to("cuda")`` without
``non_blocking=True``) makes it wait until the device has
finished everything queued, and the device then idles until the host has queued more.
An accumulator's ``update`` on the accelerator path should wait for nothing (the study
runner's one wait per batch is its non-finite check, :func:`~vitprobe.record.all_finite`).

:class:`HostWaits` finds those calls on any machine, CPU included: run the accelerator
path on CPU tensors (:attr:`vitprobe.record.Accumulator.device_path_on_cpu`) inside it::

    acc.device_path_on_cpu = True
    ...  # calibrate, then one update (tables are copied to the device once)
    with HostWaits(host=[cache[IMAGE_INDEX]]) as waits:
        acc.update(cache)
    assert not waits.calls, waits.calls

On a CUDA machine ``torch.cuda.set_sync_debug_mode("error")`` is the driver's own check.
"""

from __future__ import annotations

import traceback
from collections import Counter
from collections.abc import Iterable
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

__all__ = ["WAITING_CALLS", "HostWaits"]

#: torch functions and methods that read device values back to the host, or whose
#: output size depends on the values (CUDA's ``bincount`` reads the minimum and the
#: maximum back, ``nonzero`` the number of hits)
WAITING_CALLS = frozenset({
    "item", "__bool__", "__float__", "__int__", "__index__", "tolist", "numpy", "cpu",
    "nonzero", "argwhere", "unique", "unique_consecutive", "masked_select", "bincount",
    "histc", "equal", "allclose", "is_nonzero", "repeat_interleave",
})


class HostWaits(TorchFunctionMode):
    """Records the torch calls inside the block that would make the host wait for an
    accelerator (see the module notes), and counts every torch call by name.

    Args:
        host: tensors that live on the host by design (e.g. the study's image indices):
            reading them is not a wait.

    Attributes:
        calls: one ``"name at file:line (function)"`` per waiting call, the place being
            the innermost frame in vitprobe (else the caller's).
        counts: every torch call seen, by name (each a kernel launch or a view): how
            much the host does per batch on an accelerator.

    Thread-local, like every torch function mode: calls made on worker threads (the
    CPU paths' groups) are not seen.
    """

    def __init__(self, host: Iterable[torch.Tensor] = ()) -> None:
        super().__init__()
        self.host = list(host)
        self.calls: list[str] = []
        self.counts: Counter[str] = Counter()

    def __torch_function__(self, func: Any, types: Any, args: tuple = (),
                           kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        self.counts[name] += 1
        if self._waits(name, args, kwargs):
            self.calls.append(f"{name} at {_place()}")
        return func(*args, **kwargs)

    def _waits(self, name: str, args: tuple, kwargs: dict) -> bool:
        if name in WAITING_CALLS:
            return not (args and any(args[0] is t for t in self.host))
        if name == "__getitem__" and len(args) > 1:
            index = args[1] if isinstance(args[1], tuple) else (args[1],)
            return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in index)
        if name in ("to", "cuda") and args and isinstance(args[0], torch.Tensor):
            return _blocking_upload(name, args, kwargs)
        # a blocking copy from host memory (host_to_device copies without waiting)
        return name in ("as_tensor", "tensor") and "device" in kwargs \
            and bool(args) and not isinstance(args[0], torch.Tensor)


def _blocking_upload(name: str, args: tuple, kwargs: dict) -> bool:
    """Whether ``tensor.to(...)`` / ``tensor.cuda(...)`` copies a host tensor to another
    device without ``non_blocking=True`` (the host then waits for the device's queue)."""
    tensor, rest = args[0], args[1:]
    if tensor.device.type != "cpu":
        return False
    if name == "cuda":
        target: Any = "cuda"
    else:
        target = kwargs.get("device")
        for a in rest:
            if isinstance(a, (str, torch.device)):
                target = a
            elif isinstance(a, torch.Tensor):
                target = a.device
    if target is None or torch.device(target).type == "cpu":
        return False
    flags = [a for a in rest if isinstance(a, bool)]
    return not kwargs.get("non_blocking", flags[0] if flags else False)


def _place() -> str:
    frames = traceback.extract_stack()[:-1]
    ours = [f for f in frames if "/vitprobe/" in f.filename and not f.filename.endswith(
        "/record/waits.py")]
    f = ours[-1] if ours else frames[-1]
    return f"{f.filename.rsplit('/src/', 1)[-1]}:{f.lineno} ({f.name})"
