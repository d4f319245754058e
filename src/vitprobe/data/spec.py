"""Parsing of image-source spec strings (``--images`` on the CLI).

Grammar (whitespace is not allowed around the separators)::

    spec     := target [ "?" options ]
    options  := key "=" value { "&" key "=" value }
    target   := PATH                       a folder, a .txt/.lst list, a .tar shard,
                                           a folder of .tar shards, or a brace/glob
                                           pattern of shards ("shards-{000..009}.tar")
              | "hf:" NAME [ ":" SPLIT ]   a Hugging Face dataset (hub name or local path)
              | "demo"                     built-in photos from scikit-image/scikit-learn
              | "stimuli:" KIND            generated stimuli: gratings, noise, pink,
                                           odd-one-out

A trailing ``?...`` is read as options only when it has the ``key=value`` form, so a
glob such as ``shard-?.tar`` keeps its ``?``. Values are strings here; each source
converts the options it knows and rejects the ones it does not (typos fail loudly).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from vitprobe.errors import ImageSourceError

_OPTIONS_RE = re.compile(
    r"^(?P<target>.*?)\?(?P<query>[A-Za-z_][\w-]*=[^&]*(?:&[A-Za-z_][\w-]*=[^&]*)*)$"
)
_SCHEMES = ("hf", "stimuli")
# numeric brace range with optional zero padding, as in WebDataset shard names
_RANGE_RE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")


@dataclass(frozen=True)
class Spec:
    """A parsed spec: ``scheme`` is ``"path"``, ``"hf"``, ``"demo"`` or ``"stimuli"``."""

    scheme: str
    target: str
    options: dict[str, Any] = field(default_factory=dict)
    text: str = ""


def parse_spec(spec: str, options: dict[str, Any] | None = None) -> Spec:
    """Split ``spec`` into scheme, target and options; ``options`` (keyword
    arguments of ``open_images``) override options given in the string."""
    text = str(spec).strip()
    if not text:
        raise ImageSourceError("empty image source spec")
    query: dict[str, Any] = {}
    match = _OPTIONS_RE.match(text)
    target = text
    if match:
        target = match.group("target")
        for part in match.group("query").split("&"):
            key, _, value = part.partition("=")
            query[key.replace("-", "_")] = value
    query.update({k.replace("-", "_"): v for k, v in (options or {}).items() if v is not None})
    scheme, sep, rest = target.partition(":")
    if sep and scheme.lower() in _SCHEMES:
        return Spec(scheme.lower(), rest, query, text)
    if target.lower() == "demo":
        return Spec("demo", "", query, text)
    return Spec("path", target, query, text)


class Options:
    """Typed access to a source's options; ``finish()`` rejects unknown keys."""

    def __init__(self, spec_text: str, options: dict[str, Any]) -> None:
        self._spec = spec_text
        self._left = dict(options)

    def _take(self, key: str) -> Any:
        return self._left.pop(key, None)

    def get_str(self, key: str, default: str | None = None) -> str | None:
        value = self._take(key)
        return default if value is None else str(value)

    def get_int(self, key: str, default: int | None = None) -> int | None:
        value = self._take(key)
        if value is None:
            return default
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ImageSourceError(
                f"{self._spec}: option {key}={value!r} is not an integer"
            ) from None

    def get_float(self, key: str, default: float | None = None) -> float | None:
        value = self._take(key)
        if value is None:
            return default
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ImageSourceError(
                f"{self._spec}: option {key}={value!r} is not a number"
            ) from None

    def get_bool(self, key: str, default: bool = False) -> bool:
        value = self._take(key)
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ImageSourceError(f"{self._spec}: option {key}={value!r} is not a boolean")

    def get_list(
        self, key: str, convert: type = str, default: Iterable | None = None
    ) -> list | None:
        """A comma-separated string (or a Python sequence) converted element-wise."""
        value = self._take(key)
        if value is None:
            return None if default is None else list(default)
        items = value.split(",") if isinstance(value, str) else list(value)
        try:
            return [
                convert(str(v).strip()) if convert is not str else str(v).strip() for v in items
            ]
        except ValueError:
            raise ImageSourceError(f"{self._spec}: option {key}={value!r} is malformed") from None

    def get_size(self, key: str, default: tuple[int, int] | None = None) -> tuple[int, int] | None:
        """``224`` -> (224, 224); ``"224x320"`` -> (height 224, width 320)."""
        value = self._take(key)
        if value is None:
            return default
        if isinstance(value, int):
            return (value, value)
        if isinstance(value, tuple | list) and len(value) == 2:
            return (int(value[0]), int(value[1]))
        parts = str(value).lower().split("x")
        try:
            dims = [int(p) for p in parts]
        except ValueError:
            raise ImageSourceError(f"{self._spec}: option {key}={value!r} is not a size") from None
        if len(dims) == 1:
            return (dims[0], dims[0])
        if len(dims) == 2:
            return (dims[0], dims[1])
        raise ImageSourceError(f"{self._spec}: option {key}={value!r} is not a size")

    def has(self, key: str) -> bool:
        return key in self._left

    def check_known(self, known: Iterable[str]) -> None:
        """Raise if any option not yet taken is outside ``known``."""
        unknown = set(self._left) - set(known)
        if unknown:
            Options(self._spec, {k: self._left[k] for k in unknown}).finish(known)

    def finish(self, known: Iterable[str] = ()) -> None:
        if self._left:
            known_text = ", ".join(sorted(known)) or "none"
            raise ImageSourceError(
                f"{self._spec}: unknown option(s) {', '.join(sorted(self._left))}; "
                f"this source accepts: {known_text}"
            )


def expand_braces(pattern: str) -> list[str]:
    """Expand WebDataset-style braces: ``a-{000..002}.tar`` -> ``a-000.tar``,
    ``a-001.tar``, ``a-002.tar``; ``{x,y}`` -> alternatives. Nested braces work."""
    start = pattern.find("{")
    if start < 0:
        return [pattern]
    depth = 0
    for end in range(start, len(pattern)):
        if pattern[end] == "{":
            depth += 1
        elif pattern[end] == "}":
            depth -= 1
            if depth == 0:
                break
    else:
        raise ImageSourceError(f"unbalanced braces in {pattern!r}")
    body, head, tail = pattern[start + 1 : end], pattern[:start], pattern[end + 1 :]
    match = _RANGE_RE.match(body)
    if match:
        lo, hi = match.group(1), match.group(2)
        width = len(lo) if lo.startswith("0") and len(lo) > 1 else 0
        step = 1 if int(hi) >= int(lo) else -1
        choices = [str(i).zfill(width) for i in range(int(lo), int(hi) + step, step)]
    else:
        choices = _split_top_level(body)
    out: list[str] = []
    for choice in choices:
        out.extend(expand_braces(head + choice + tail))
    return out


def _split_top_level(body: str) -> list[str]:
    parts, depth, current = [], 0, []
    for ch in body:
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        depth += ch == "{"
        depth -= ch == "}"
        current.append(ch)
    parts.append("".join(current))
    return parts
