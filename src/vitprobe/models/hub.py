"""Loading hub weights without hanging when the hub is out of reach.

``huggingface_hub`` retries an unreachable hub for about a minute per file before
it falls back to its cache or fails. :func:`hub_access` checks reachability once
(a TCP connection with a short timeout); when the hub cannot be reached it switches
the hub client to offline mode for the load, so cached weights load at once and
missing ones fail at once with a message that says what to do.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from urllib.parse import urlparse

from vitprobe.errors import VitprobeError

__all__ = ["HubUnreachableError", "hub_access", "hub_reachable"]

#: seconds to wait for a TCP connection to the hub
CONNECT_TIMEOUT_S = 3.0


class HubUnreachableError(VitprobeError, OSError):
    """Weights are neither in the local cache nor reachable on the hub."""


def hub_reachable(timeout: float = CONNECT_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the Hugging Face endpoint opens within ``timeout`` s."""
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def hub_access(what: str) -> Iterator[None]:
    """Load ``what`` (a model spec) from the hub or, when the hub is unreachable, from
    the local cache alone.

    Raises:
        HubUnreachableError: the hub is unreachable and the weights are not cached.
    """
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE") == "1":
        offline, reason = True, "HF_HUB_OFFLINE is set"
    else:
        offline = not hub_reachable()
        reason = f"{constants.ENDPOINT} cannot be reached"
    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = offline or previous
    try:
        yield
    except (OSError, ValueError, RuntimeError) as err:
        if not offline or isinstance(err, VitprobeError):
            raise
        raise HubUnreachableError(
            f"{what}: the weights are not in the local Hugging Face cache "
            f"({constants.HF_HUB_CACHE}) and {reason}. Load the model once where the hub is "
            "reachable (the cache is reused), copy that cache here, or pass the weights as a "
            "file with --checkpoint FILE") from err
    finally:
        constants.HF_HUB_OFFLINE = previous
