"""A scratch host's directories: the VS_* environment of a host under one directory."""

from __future__ import annotations

import os
from pathlib import Path


def make_scratch_host(work: Path, conf: str = "") -> dict[str, str]:
    """Make a scratch host's VS_* directories under ``work`` (which exists), with ``conf`` as
    its vs-tools.conf when given; its environment (``scratch_env``)."""
    for name in ("etc", "guests", "root", "state", "run"):
        (work / name).mkdir()
    if conf:
        (work / "etc" / "vs-tools.conf").write_text(conf)
    return scratch_env(work)


def scratch_env(work: Path) -> dict[str, str]:
    """The VS_* directories of a scratch host under ``work`` ."""
    return {
        "VS_ETC_DIR": str(work / "etc"),
        "VS_GUESTS_CONF_DIR": str(work / "guests"),
        "VS_ROOT_DIR": str(work / "root"),
        "VS_STATE_DIR": str(work / "state"),
        "VS_RUN_DIR": str(work / "run"),
        "VS_NO_SYSTEMD": "1",
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
    }
