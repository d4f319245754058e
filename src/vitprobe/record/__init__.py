"""Recording activations: site names, hooks, and the accumulator protocol with the
helpers every accumulator shares (threads, the non-finite check, host-to-device copies,
finding host waits on the accelerator path)."""

from vitprobe.record.accumulator import (
    Accumulator,
    all_finite,
    host_to_device,
    nonfinite_rows,
    resolve_threads,
    run_parallel,
    torch_threads,
)
from vitprobe.record.recorder import Recorder
from vitprobe.record.sites import SITE_KINDS, parse_site, resolve_sites, site_name
from vitprobe.record.waits import WAITING_CALLS, HostWaits

__all__ = [
    "SITE_KINDS",
    "WAITING_CALLS",
    "Accumulator",
    "HostWaits",
    "Recorder",
    "all_finite",
    "host_to_device",
    "nonfinite_rows",
    "parse_site",
    "resolve_sites",
    "resolve_threads",
    "run_parallel",
    "site_name",
    "torch_threads",
]
