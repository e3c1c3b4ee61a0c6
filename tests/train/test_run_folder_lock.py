"""The run folder's lock (`mmssl.train.run_folder`): held while a run uses the folder, refused to a second run,
and gone when the run lets go -- without a window in which two runs could both hold it."""

from __future__ import annotations

import os

import pytest

from mmssl.errors import MmsslError
from mmssl.outputs import LOCK
from mmssl.train import run_folder
from mmssl.train.run_folder import lock_run_folder, release_run_folder


def test_the_lock_refuses_a_second_holder_and_is_deleted_on_release(tmp_path):
    lock_run_folder(tmp_path)
    try:
        with pytest.raises(MmsslError, match="in use by another mmssl run"):
            lock_run_folder(tmp_path)  # another open file description: refused like another process
    finally:
        release_run_folder(tmp_path)
    assert not (tmp_path / LOCK).exists()
    lock_run_folder(tmp_path)  # free again
    release_run_folder(tmp_path)
    assert not (tmp_path / LOCK).exists()


def test_a_lock_file_deleted_under_a_waiting_run_is_not_trusted(tmp_path, monkeypatch):
    """The holder deletes the file between our open and our flock: we then lock a file no longer at the path,
    which a third run would not see; the lock must be taken again on the file that is at the path."""
    real_flock, calls = run_folder.fcntl.flock, []

    def flock(fd, op):
        if not calls:  # the previous holder lets go: deletes the file (and its lock goes with its descriptor)
            os.unlink(tmp_path / LOCK)
        calls.append(fd)
        return real_flock(fd, op)

    monkeypatch.setattr(run_folder.fcntl, "flock", flock)
    lock_run_folder(tmp_path)
    try:
        held = run_folder._held_locks[tmp_path.resolve()]
        assert len(calls) == 2 and os.fstat(held).st_ino == os.stat(tmp_path / LOCK).st_ino
    finally:
        release_run_folder(tmp_path)
    assert not (tmp_path / LOCK).exists()
