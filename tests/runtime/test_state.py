"""StateReader: read_state for the monitor's every check, state.json parsed again only when the
supervisor replaced it, the guest's lock checked every time."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

import pytest

from vstools.runtime import state as state_module
from vstools.runtime.state import LOCK_FILE, STATE_FILE, CorruptState, StateReader


def _write(run_dir: Path, init_pid: int) -> None:
    data = {
        "name": "web",
        "supervisor_pid": 10,
        "supervisor_start": 1,
        "init_pid": init_pid,
        "started_at": 1.0,
        "cgroup": "vs-tools/web",
    }
    tmp = run_dir / "state.tmp"
    tmp.write_text(json.dumps(data))
    os.replace(tmp, run_dir / STATE_FILE)  # as the supervisor replaces it: a new inode


def test_state_reader_parses_again_only_a_replaced_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reader = StateReader(tmp_path)
    assert reader.read() is None  # no lock file: not running
    fd = os.open(tmp_path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        assert reader.read() is None  # nobody holds the lock
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert reader.read() is None  # locked, no state.json yet (starting)
        _write(tmp_path, 100)
        parsed: list[Path] = []
        real = state_module.read_state_file
        monkeypatch.setattr(state_module, "read_state_file", lambda d: parsed.append(d) or real(d))
        assert [reader.read().init_pid for _ in range(3)] == [100, 100, 100]  # type: ignore[union-attr]
        assert len(parsed) == 1
        _write(tmp_path, 200)  # the guest restarted
        assert reader.read().init_pid == 200  # type: ignore[union-attr]
        assert len(parsed) == 2
        (tmp_path / STATE_FILE).write_text("{not json")
        with pytest.raises(CorruptState):
            reader.read()
        fcntl.flock(fd, fcntl.LOCK_UN)
        assert reader.read() is None  # the supervisor is gone
    finally:
        os.close(fd)
