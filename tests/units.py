"""The systemd units of systemd/, as vs-setup installs them, for the tests that check them with
systemd-analyze and run their Exec lines directly (PID 1 here is not systemd)."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from vstools.cli.vs_setup import unit_text

ROOT = Path(__file__).resolve().parents[1]
BIN = str(Path(sys.executable).parent)


def unit(name: str) -> str:
    """The unit file as vs-setup writes it (its commands in this venv's bin)."""
    return unit_text((ROOT / "systemd" / name).read_text(), BIN)


def directive(text: str, key: str) -> str:
    return next(line.split("=", 1)[1] for line in text.splitlines() if line.startswith(key + "="))


def verify(tmp_path: Path, names: tuple[str, ...], instance: str) -> str:
    """systemd-analyze verify of ``names`` (a template through its ``instance``); its stderr
    after asserting it succeeded."""
    targets = []
    for name in names:
        (tmp_path / name).write_text(unit(name))
        if name.endswith("@.service"):
            linked = tmp_path / name.replace("@.", f"@{instance}.")
            linked.symlink_to(name)
            targets.append(str(linked))
        else:
            targets.append(str(tmp_path / name))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *targets],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    return result.stderr


@contextlib.contextmanager
def notify_socket(path: Path) -> Iterator[socket.socket]:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(path))
    listener.settimeout(20)
    try:
        yield listener
    finally:
        listener.close()
