"""Recording sites: stable, self-explaining names for what can be recorded.

Per block ``l`` (0-based):

====================  ============================  =========================================
site                  shape                         what it is
====================  ============================  =========================================
blocks.l.resid_pre    (batch, token, d_model)       the block's input (residual stream)
blocks.l.ln1          (batch, token, d_model)       tokens as attention sees them (after LN1)
blocks.l.attn.q       (batch, head, token, d_head)  queries (likewise .k, .v)
blocks.l.attn.scores  (batch, head, query, key)     q k^T * scale, before the softmax
blocks.l.attn.pattern (batch, head, query, key)     attention probabilities (rows sum to 1)
blocks.l.attn.out     (batch, token, d_model)       MHA sublayer's addition to the residual
                                                    (after the output projection and LayerScale)
blocks.l.mlp.out      (batch, token, d_model)       MLP sublayer's addition (after LayerScale)
blocks.l.resid_post   (batch, token, d_model)       the block's output
====================  ============================  =========================================

So ``resid_post == resid_pre + attn.out + mlp.out``. Globs (``blocks.*.mlp.out``,
``blocks.3.*``) select several sites; ``fnmatch`` rules apply.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable

from vitprobe.errors import ConfigurationError

SITE_KINDS = (
    "resid_pre",
    "ln1",
    "attn.q",
    "attn.k",
    "attn.v",
    "attn.scores",
    "attn.pattern",
    "attn.out",
    "mlp.out",
    "resid_post",
)
QKV_KINDS = ("attn.q", "attn.k", "attn.v", "attn.scores", "attn.pattern")

_SITE = re.compile(r"^blocks\.(\d+)\.(.+)$")


def site_name(layer: int, kind: str) -> str:
    return f"blocks.{layer}.{kind}"


def all_sites(n_layers: int) -> list[str]:
    return [site_name(layer, kind) for layer in range(n_layers) for kind in SITE_KINDS]


def parse_site(name: str) -> tuple[int, str]:
    """``"blocks.3.attn.out"`` -> ``(3, "attn.out")``."""
    match = _SITE.match(name)
    if not match or match.group(2) not in SITE_KINDS:
        raise ConfigurationError(
            f"unknown site {name!r}; sites look like 'blocks.<layer>.<kind>' "
            f"with kind one of {', '.join(SITE_KINDS)}"
        )
    return int(match.group(1)), match.group(2)


def resolve_sites(patterns: str | Iterable[str], n_layers: int) -> list[str]:
    """Expand names and globs into concrete site names, in model order, without repeats.

    Raises:
        ConfigurationError: a pattern matches nothing (a typo must not record silently nothing).
    """
    if isinstance(patterns, str):
        patterns = [patterns]
    known = all_sites(n_layers)
    chosen: set[str] = set()
    for pattern in patterns:
        matched = fnmatch.filter(known, pattern)
        if not matched:
            if _SITE.match(pattern) and int(_SITE.match(pattern).group(1)) >= n_layers:
                raise ConfigurationError(
                    f"site {pattern!r}: the model has layers 0..{n_layers - 1}")
            negative = re.match(r"^blocks\.-\d+\.(.+)$", pattern)
            if negative:
                raise ConfigurationError(
                    f"site {pattern!r}: layers are numbered 0..{n_layers - 1}, not from the "
                    f"end (the last is {site_name(n_layers - 1, negative.group(1))!r})")
            parse_site(pattern)  # raises the descriptive error for malformed names
            raise ConfigurationError(f"site pattern {pattern!r} matches no site")
        chosen.update(matched)
    return [s for s in known if s in chosen]
