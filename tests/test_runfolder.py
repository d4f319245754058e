"""The run folder's lock: held by exactly the process that took it, never by its children."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from vitprobe import runfolder
from vitprobe.errors import RunFolderError

# Takes the folder's lock, forks a child that outlives it (as a loader worker outlives a
# killed study for a few seconds), then waits for a signal. The child reports its own pid:
# os.fork returns in the child only after the at-fork hooks ran, so the test never looks at
# the lock while a child that has not yet run (a loaded machine) still shares it.
_HOLDER = textwrap.dedent("""
    import os, sys, time
    from vitprobe import runfolder
    with runfolder.lock(sys.argv[1]):
        if os.fork() == 0:
            print(os.getpid(), flush=True)
            time.sleep(60)
            os._exit(0)
        time.sleep(60)
""")


def _start_holder(out):
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(out)],
                              stdout=subprocess.PIPE, text=True)
    child = int(holder.stdout.readline())
    return holder, child


def test_a_forked_child_does_not_hold_the_lock_past_its_killed_parent(tmp_path):
    holder, child = _start_holder(tmp_path)
    try:
        assert runfolder.is_locked(tmp_path)  # the parent holds it
        with pytest.raises(RunFolderError, match=f"pid {holder.pid} on"):
            with runfolder.lock(tmp_path):
                pass
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        os.kill(child, 0)  # the child is alive ...
        assert not runfolder.is_locked(tmp_path)  # ... and the folder is free at once
        with runfolder.lock(tmp_path):  # a new run takes it
            assert runfolder.is_locked(tmp_path)
    finally:
        holder.kill()
        holder.wait(10)
        os.kill(child, signal.SIGKILL)


def test_a_child_exiting_leaves_its_parents_lock_in_place(tmp_path):
    script = textwrap.dedent("""
        import os, sys, time
        from vitprobe import runfolder
        with runfolder.lock(sys.argv[1]):
            child = os.fork()
            if child == 0:
                os._exit(0)
            os.waitpid(child, 0)
            print("child gone", flush=True)
            time.sleep(60)
    """)
    holder = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "child gone"
        assert runfolder.is_locked(tmp_path)
    finally:
        holder.kill()
        holder.wait(10)
    deadline = time.monotonic() + 10
    while runfolder.is_locked(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not runfolder.is_locked(tmp_path)
