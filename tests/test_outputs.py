"""kinetics_jax.outputs: one writer per output (across processes and within one), unique temporaries, atomic
replacement, and the checks that run before compute."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from kinetics_jax import outputs

OUTPUTS = outputs.__file__


def _holder(path: str) -> subprocess.Popen:
    """A separate process that takes the output's lock, says so on stdout, and then sleeps."""
    code = textwrap.dedent(f"""
        import importlib.util, time
        spec = importlib.util.spec_from_file_location("outputs", {OUTPUTS!r})  # without the package's jax
        outputs = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(outputs)
        with outputs.exclusive({path!r}):
            print("locked", flush=True)
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_writer_in_another_process_is_refused_and_a_killed_holder_frees_the_output(tmp_path):
    out = str(tmp_path / "runs" / "e.jsonl")
    holder = _holder(out)
    try:
        with pytest.raises(outputs.OutputBusyError, match=rf"e.jsonl is being written by another process "
                                                          rf"\(pid {holder.pid} on "):
            with outputs.exclusive(out):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The kernel released the dead holder's lock; its lock file is still there and is taken over.
    assert os.path.exists(outputs.lock_path(out))
    with outputs.exclusive(out) as path:
        assert path == out
        with open(outputs.lock_path(out)) as f:
            assert f.read().startswith(f"pid {os.getpid()} ")
    assert not os.path.exists(outputs.lock_path(out))  # removed on release: nothing left behind


def test_second_writer_in_the_same_process_is_refused(tmp_path):
    out = str(tmp_path / "ckpt")
    with outputs.exclusive(out, directory=True):
        with pytest.raises(outputs.OutputBusyError, match="already being written by this process"):
            with outputs.exclusive(out, directory=True):
                pass
    with outputs.exclusive(out, directory=True):  # released: free again
        pass
    assert os.listdir(tmp_path) == []


def test_a_refused_writer_leaves_the_holders_lock_alone(tmp_path):
    out = str(tmp_path / "o.jsonl")
    holder = _holder(out)
    try:
        for _ in range(3):
            with pytest.raises(outputs.OutputBusyError):
                with outputs.exclusive(out):
                    pass
        assert os.path.exists(outputs.lock_path(out))
    finally:
        holder.terminate()
        holder.wait()


def test_lock_is_retaken_when_the_holder_removed_the_file_in_between(tmp_path, monkeypatch):
    """A writer that opened the lock file just before its holder removed it must not hold a lock on the dead
    inode while a third writer locks the new file: it checks the inode and starts over."""
    out = str(tmp_path / "o.jsonl")
    lock = outputs.lock_path(out)
    real_flock = outputs.fcntl.flock
    calls = []

    def flock_then_unlink(fd, op):
        real_flock(fd, op)
        if not calls:  # the first attempt: the previous holder removes its file right after our flock
            os.unlink(lock)
        calls.append(os.fstat(fd).st_ino)

    monkeypatch.setattr(outputs.fcntl, "flock", flock_then_unlink)
    with outputs.exclusive(out):
        assert len(calls) == 2 and os.stat(lock).st_ino == calls[1]


def test_replacing_is_atomic_and_removes_its_temporary_on_error(tmp_path):
    out = tmp_path / "sub" / "o.txt"
    with outputs.replacing(out) as f:
        f.write("one\n")
    assert out.read_text() == "one\n"
    with pytest.raises(RuntimeError):
        with outputs.replacing(out) as f:
            f.write("two, half written")
            raise RuntimeError("killed")
    assert out.read_text() == "one\n"  # the old content stays whole
    assert sorted(os.listdir(out.parent)) == ["o.txt"]  # no temporary left


def test_temporary_paths_are_unique_hidden_siblings(tmp_path):
    out = str(tmp_path / "o.jsonl")
    names = {outputs.temporary_path(out) for _ in range(1000)}
    assert len(names) == 1000
    for name in names:
        directory, base = os.path.split(name)
        assert directory == str(tmp_path) and base.startswith(f".o.jsonl.{os.getpid()}.") and base.endswith(".tmp")


def test_check_writable_refuses_before_compute(tmp_path):
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("x")
    with pytest.raises(outputs.OutputError, match="is a directory; give a file path"):
        outputs.check_writable(tmp_path / "adir")
    with pytest.raises(outputs.OutputError, match="is a file; give a directory path"):
        outputs.check_writable(tmp_path / "afile", directory=True)
    with pytest.raises(outputs.OutputError, match="afile is not a directory"):
        outputs.check_writable(tmp_path / "afile" / "o.jsonl")
    # A read-only file system (root passes permission checks, so use one that refuses everyone).
    with pytest.raises(outputs.OutputError, match="cannot write output /proc/kinetics_jax_test/o.jsonl"):
        outputs.check_writable("/proc/kinetics_jax_test/o.jsonl")
    # Missing parents are fine (the writer creates them), and the probe leaves nothing behind.
    assert outputs.check_writable(tmp_path / "new" / "deeper" / "o.jsonl") == str(tmp_path / "new/deeper/o.jsonl")
    assert sorted(os.listdir(tmp_path)) == ["adir", "afile"]


def test_remove_takes_files_and_trees(tmp_path):
    (tmp_path / "tree" / "sub").mkdir(parents=True)
    (tmp_path / "tree" / "sub" / "x").write_text("x")
    (tmp_path / "file").write_text("x")
    outputs.remove(tmp_path / "tree")
    outputs.remove(tmp_path / "file")
    outputs.remove(tmp_path / "absent")
    assert os.listdir(tmp_path) == []


def test_lock_is_fast(tmp_path):
    out = str(tmp_path / "o")
    start = time.perf_counter()
    for _ in range(200):
        with outputs.exclusive(out):
            pass
    assert time.perf_counter() - start < 2.0  # a few syscalls each; generous for a loaded CI machine
