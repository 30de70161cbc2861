"""A btrfs file system on a loop device, for the tests and the benchmarks: a sparse image named
with the run's prefix, its loop device, the file system mounted at a directory named with the
prefix too, quotas on. The loop device is detached and the image removed also on failure."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def btrfs_loop(directory: Path, prefix: str, size_mb: int = 1024) -> Iterator[Path]:
    image = directory / f"{prefix}-btrfs.img"
    mountpoint = directory / f"{prefix}-btrfs"
    with open(image, "wb") as handle:
        handle.truncate(size_mb << 20)
    try:
        device = subprocess.run(
            ["losetup", "--find", "--show", str(image)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        try:
            subprocess.run(["mkfs.btrfs", "-q", device], check=True, capture_output=True)
            mountpoint.mkdir()
            subprocess.run(["mount", device, str(mountpoint)], check=True, capture_output=True)
            try:
                subprocess.run(
                    ["btrfs", "quota", "enable", str(mountpoint)], check=True, capture_output=True
                )
                yield mountpoint
            finally:
                if subprocess.run(["umount", str(mountpoint)], check=False).returncode != 0:
                    # Something still holds it (a test's stray process): detach it lazily so
                    # the loop device below is released with the last user.
                    subprocess.run(["umount", "--lazy", str(mountpoint)], check=False)
        finally:
            subprocess.run(["losetup", "--detach", device], check=False)
    finally:
        image.unlink()
