"""vs-backup.service and vs-backup.timer: checked with systemd-analyze verify (PID 1 here is not
systemd), the service's command existing and the timer naming it."""

from __future__ import annotations

import shlex
from pathlib import Path

from tests.units import directive, unit, verify

UNITS = ("vs-backup.service", "vs-backup.timer")


def test_backup_units_verify(tmp_path: Path) -> None:
    warnings = verify(tmp_path, UNITS, "")
    assert "vs-backup" not in warnings


def test_the_timer_starts_the_service_which_runs_vs_backup() -> None:
    timer = unit("vs-backup.timer")
    assert directive(timer, "Unit") == "vs-backup.service"
    assert directive(timer, "Persistent") == "true"
    argv = shlex.split(directive(unit("vs-backup.service"), "ExecStart"))
    assert Path(argv[0]).is_file() and argv[0].endswith("/vs-backup")
    assert argv[1:] == ["--yes"]
