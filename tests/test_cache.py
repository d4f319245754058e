"""Atomic writes leave nothing behind, even after a writer was killed outright."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from vitprobe.cache import atomic_write, remove_orphan_temporaries


def _killed_writer(folder) -> int:
    """A real process that starts an atomic write and is killed with SIGKILL mid-way."""
    code = ("import sys, time; from vitprobe.cache import atomic_write\n"
            "with atomic_write(sys.argv[1] + '/weights.bin') as tmp:\n"
            "    tmp.write_bytes(b'x' * 1000); print('writing', flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    return proc.pid


def test_orphans_of_killed_writers_are_removed_and_live_ones_kept(tmp_path):
    _killed_writer(tmp_path)
    orphans = list(tmp_path.glob(".*.tmp"))
    assert len(orphans) == 1 and not (tmp_path / "weights.bin").exists()
    live = tmp_path / f".other.bin.{os.getpid()}.abc.tmp"  # this process: still writing
    live.write_bytes(b"y")
    with atomic_write(tmp_path / "weights.bin") as tmp:
        tmp.write_bytes(b"done")
    assert (tmp_path / "weights.bin").read_bytes() == b"done"
    assert not orphans[0].exists() and live.exists()
    assert remove_orphan_temporaries(tmp_path) == []
