"""write_atomic: readers see the old file or the new one, the asked mode from the start, and no temporary file left."""

from __future__ import annotations

import os
import stat
import threading

import pytest

from jobs.common.atomic import read_json, write_atomic, write_json


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_writes_and_replaces_leaving_only_the_target(tmp_path):
    target = tmp_path / "state.json"
    write_atomic(target, '{"a": 1}\n')
    write_atomic(str(target), b'{"a": 2}\n')
    assert target.read_text() == '{"a": 2}\n'
    assert os.listdir(tmp_path) == ["state.json"]


def test_mode_is_the_asked_one_and_the_umask_applies_otherwise(tmp_path):
    old = os.umask(0o022)
    try:
        write_atomic(tmp_path / "token", "secret", mode=0o600)
        write_atomic(tmp_path / "shared", "x", mode=0o644)
        write_atomic(tmp_path / "plain", "x")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "token") == 0o600
    assert _mode(tmp_path / "shared") == 0o644
    assert _mode(tmp_path / "plain") == 0o644
    # Replacing an existing file takes the new mode too.
    write_atomic(tmp_path / "plain", "y", mode=0o600)
    assert _mode(tmp_path / "plain") == 0o600


def test_a_failed_write_keeps_the_old_content_and_removes_its_temporary_file(tmp_path, monkeypatch):
    target = tmp_path / "index.json"
    write_atomic(target, "old")

    def disk_error(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", disk_error)
    with pytest.raises(OSError, match="Input/output error"):
        write_atomic(target, "new")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["index.json"]
    with pytest.raises(FileNotFoundError):
        write_atomic(tmp_path / "missing" / "x.json", "new")


def test_a_reader_never_sees_a_partial_file(tmp_path):
    target = tmp_path / "big"
    versions = [bytes([65 + i]) * 300_000 for i in range(4)]
    write_atomic(target, versions[0])
    done = threading.Event()

    def writer():
        for i in range(40):
            write_atomic(target, versions[i % len(versions)])
        done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    reads = 0
    while not done.is_set() or reads == 0:
        assert target.read_bytes() in versions
        reads += 1
    thread.join()


def test_read_json_gives_the_object_or_none_for_missing_partial_or_other_content(tmp_path):
    path = tmp_path / "progress.json"
    assert read_json(path) is None  # not written yet
    write_json(path, {"done": 3})
    assert read_json(path) == {"done": 3}
    path.write_text('{"done": ')  # a writer that was not atomic, or a job that died mid-write
    assert read_json(path) is None
    path.write_text("[1, 2]")
    assert read_json(path) is None
