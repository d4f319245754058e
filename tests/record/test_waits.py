"""HostWaits finds the calls that would make the host wait for an accelerator."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vitprobe.attention.geometry import pair_geometry
from vitprobe.record import HostWaits, host_to_device

X = torch.arange(12.0).reshape(3, 4)


@pytest.mark.parametrize("call", [
    lambda: X.sum().item(),
    lambda: bool(X.sum() > 0),
    lambda: float(X.sum()),
    lambda: int(X.argmax()),
    lambda: X.tolist(),
    lambda: X.cpu(),
    lambda: X.numpy(),
    lambda: torch.nonzero(X > 3),
    lambda: torch.bincount(X.long().flatten()),
    lambda: X[X > 3],
    lambda: torch.unique(X),
    lambda: torch.equal(X, X),
    lambda: torch.as_tensor(np.arange(3), device="cpu"),
    lambda: torch.tensor([1, 2], device="cpu"),
], ids=["item", "bool", "float", "int", "tolist", "cpu", "numpy", "nonzero", "bincount",
        "bool-index", "unique", "equal", "as_tensor-device", "tensor-device"])
def test_waiting_calls_are_found(call) -> None:
    with HostWaits() as waits:
        call()
    assert len(waits.calls) >= 1, waits.calls


def test_queued_work_is_not_a_wait() -> None:
    counts = torch.zeros(8, dtype=torch.int64)
    index = torch.arange(4)
    with HostWaits(host=[index]) as waits:
        y = (X * 2 + 1).softmax(-1)
        counts.index_add_(0, torch.tensor([1, 1, 3]).to(counts.device),
                          torch.ones((), dtype=torch.int64).expand(3))
        torch.searchsorted(torch.linspace(0, 1, 5), y)
        host_to_device(np.arange(3), torch.device("cpu"))
        torch.as_tensor(np.arange(3))  # to a host tensor: no device involved
        index.cpu(), index.numpy()  # a host tensor by design
    assert waits.calls == []
    assert waits.counts["index_add_"] == 1 and waits.counts["softmax"] == 1


def test_the_place_named_is_vitprobe_code() -> None:
    """pair_geometry choosing its centring from the batch reads two values back; told
    how to centre, it reads none."""
    e = torch.randn(2, 5, 8)
    mu = torch.randn(8)
    with HostWaits() as waits:
        pair_geometry(e, 1, 8, ("raw", "centered"), mean_token=mu)
    assert waits.calls and all("vitprobe/attention/geometry.py:" in c
                               and "(pair_geometry)" in c for c in waits.calls), waits.calls
    with HostWaits() as waits:
        pair_geometry(e, 1, 8, ("raw", "centered"), mean_token=mu, direct_centring=True)
    assert waits.calls == []


def test_blocking_uploads_are_waits_and_non_blocking_ones_are_not() -> None:
    """A host tensor copied to another device ("meta" stands in for a GPU here) without
    non_blocking=True is a wait; with it, or to the host, it is not."""
    with HostWaits() as waits:
        X.to("meta")
        X.to(torch.device("meta"), torch.float64)
        X.to(device="meta")
        X.to(torch.empty(0, device="meta"))
    assert len(waits.calls) == 4, waits.calls
    with HostWaits() as waits:
        X.to("meta", non_blocking=True)
        X.to("meta", torch.float64, True)
        X.to("cpu")
        X.to(torch.float64)
        X.to("meta").to("meta")  # the first is a wait; a device tensor's copy is not
    assert len(waits.calls) == 1, waits.calls
