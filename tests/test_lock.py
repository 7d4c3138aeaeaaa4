"""The output-folder lock: a second run is refused with the holder's name; a killed holder never blocks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cxr_fast.errors import UserError
from cxr_fast.lock import LOCK_NAME, folder_lock, holder
from tests.helpers import assert_user_error

# A process that takes the lock, says so, and then waits (optionally after forking a child that outlives it).
_HOLDER = textwrap.dedent("""
    import os, sys, time
    from cxr_fast.lock import folder_lock
    with folder_lock(sys.argv[1], what="test-holder"):
        if sys.argv[2] == "fork" and os.fork() == 0:
            time.sleep(60)
            os._exit(0)
        print("locked", flush=True)
        time.sleep(60)
""")
# A second taker: exit 2 and the message on stderr when refused, as a CLI would.
_TAKER = textwrap.dedent("""
    import sys
    from cxr_fast.errors import UserError
    from cxr_fast.lock import folder_lock
    try:
        with folder_lock(sys.argv[1], what="test-taker"):
            print("got it")
    except UserError as e:
        print(e, file=sys.stderr)
        sys.exit(2)
""")


def _start_holder(folder: Path, mode: str = "plain") -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(folder), mode], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def _take(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _TAKER, str(folder)], check=False, capture_output=True, text=True,
                          timeout=60)


def test_second_process_is_refused_with_the_holders_name(tmp_path):
    proc = _start_holder(tmp_path / "out")
    try:
        r = _take(tmp_path / "out")
        msg = assert_user_error(r, prefix="")  # the taker prints the bare message, as UserError's text
        assert "got it" not in r.stdout
        assert str(tmp_path / "out") in msg and f"pid {proc.pid}" in msg and socket.gethostname() in msg
        assert "started 20" in msg and "test-holder" in msg and "choose another output folder" in msg
    finally:
        proc.kill()
        proc.wait()


def test_kill_9_holder_leaves_the_folder_usable_at_once(tmp_path):
    folder = tmp_path / "out"
    proc = _start_holder(folder)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (folder / LOCK_NAME).is_file()  # left behind, naming the dead holder...
    assert f"pid {proc.pid}" in holder(folder)
    t0 = time.perf_counter()
    r = _take(folder)  # ...and it does not block
    assert r.returncode == 0 and "got it" in r.stdout, r.stderr
    assert time.perf_counter() - t0 < 30
    assert not (folder / LOCK_NAME).exists()  # a clean release removes it


def test_a_forked_child_that_outlives_its_killed_parent_does_not_hold_the_lock(tmp_path):
    folder = tmp_path / "out"
    proc = _start_holder(folder, "fork")
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], check=False, capture_output=True,
                              text=True).stdout.split()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    try:
        assert children, "the holder's forked child was not found"
        with folder_lock(folder, what="after"):
            pass
    finally:
        for c in children:
            os.kill(int(c), signal.SIGKILL)


def test_same_process_twice_is_refused_and_release_cleans_up(tmp_path):
    folder = tmp_path / "new" / "out"
    with folder_lock(folder, what="first") as f:
        assert f == folder.absolute() and folder.is_dir()
        text = (folder / LOCK_NAME).read_text()
        assert f"pid={os.getpid()}" in text and "what=first" in text
        with pytest.raises(UserError, match=f"pid {os.getpid()}"), folder_lock(folder):
            pass
    assert list(folder.iterdir()) == []
    with folder_lock(folder):  # taken again after the release
        pass


def test_a_file_is_not_a_folder(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match="not a directory"), folder_lock(tmp_path / "f"):
        pass
