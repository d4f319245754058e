"""Recording activations: site names, hooks, and the accumulator protocol with the
helpers every accumulator shares (threads, the non-finite check)."""

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

__all__ = [
    "SITE_KINDS",
    "Accumulator",
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
