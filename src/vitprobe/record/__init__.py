"""Recording activations: site names, hooks, and the accumulator protocol."""

from vitprobe.record.accumulator import Accumulator
from vitprobe.record.recorder import Recorder
from vitprobe.record.sites import SITE_KINDS, parse_site, resolve_sites, site_name

__all__ = ["SITE_KINDS", "Accumulator", "Recorder", "parse_site", "resolve_sites", "site_name"]
