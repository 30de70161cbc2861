"""Benchmark (issue 3): building a guest's root on each storage backend this machine has, with
the library's own create plan (vs-create without the interpreter start). Run as root:
    .venv/bin/python -m bench.bench_storage [--data-mb 200] [--rounds 3]

A template of the busybox root plus --data-mb MB of files (64 files) is unpacked into a new
guest, which is then cloned, on ``dir`` (a directory on this machine's /tmp) and on ``btrfs``
(a file system on a loop device made for the run, prefix vstbench, removed after). Also the
time of a read-only btrfs snapshot. Prints figures; asserts nothing about time."""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address
from pathlib import Path

from harness.btrfs import btrfs_loop
from vstools.config.create import CreateConf
from vstools.config.networks import parse_networks
from vstools.guest.create import CreateRequest, plan_create
from vstools.guest.templates import build_busybox_rootfs
from vstools.host.hostconfig import HostConfig
from vstools.paths import Paths
from vstools.plan import apply_steps
from vstools.storage.btrfs import BtrfsStorage

PREFIX = f"vstbench{os.getpid()}"


def _template(work: Path, data_mb: int) -> Path:
    root = build_busybox_rootfs(work / "template")
    data = root / "srv" / "data"
    data.mkdir(parents=True)
    for index in range(64):
        (data / f"f{index}").write_bytes(os.urandom(data_mb * (1 << 20) // 64))
    tarball = work / "template.tar"
    subprocess.run(
        ["tar", "--numeric-owner", "-cf", str(tarball), "-C", str(root), "."], check=True
    )
    return tarball


def _paths(base: Path, root_dir: Path) -> Paths:
    for name in ("etc", "guests", "state", "run"):
        (base / name).mkdir(parents=True, exist_ok=True)
    root_dir.mkdir(exist_ok=True)
    return Paths(base / "etc", base / "guests", root_dir, base / "state", base / "run")


def _timed(action: Callable[[], object]) -> float:
    subprocess.run(["sync"], check=True)
    started = time.monotonic()
    action()
    return time.monotonic() - started


def _round(paths: Paths, storage: str, template: Path, n: int) -> tuple[float, float]:
    conf = CreateConf.parse("create.conf", f"DEFAULT_TEMPLATE={template}\nSTORAGE={storage}\n")
    networks = parse_networks("networks.conf", "0,198.51.100.0/24,198.51.100.1\n")

    def create(name: str, octet: int, clone: str | None = None) -> None:
        request = CreateRequest(
            name=name, ip=IPv4Address(f"198.51.100.{octet}"), clone=clone, context=octet
        )
        host = HostConfig.given(paths, create=conf, networks=networks)
        apply_steps(plan_create(host, request, probe_network=False).steps)

    created = _timed(lambda: create(f"web{n}", 10 + 2 * n))
    cloned = _timed(lambda: create(f"copy{n}", 11 + 2 * n, clone=f"web{n}"))
    return created, cloned


def _backends(work: Path) -> Iterator[tuple[str, Path]]:
    yield "dir", work / "dir-root"
    with btrfs_loop(work, PREFIX, size_mb=4096) as mountpoint:
        yield "btrfs", mountpoint / "vservers"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-mb", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix=f"{PREFIX}-") as tmp:
        work = Path(tmp)
        template = _template(work, args.data_mb)
        print(f"template: busybox root + {args.data_mb} MB in 64 files, rounds: {args.rounds}")
        for storage, root_dir in _backends(work):
            paths = _paths(work / storage, root_dir)
            figures = [_round(paths, storage, template, n) for n in range(args.rounds)]
            created = statistics.median(f[0] for f in figures)
            cloned = statistics.median(f[1] for f in figures)
            print(f"{storage:>6}: create from the template {created:.3f} s, clone {cloned:.3f} s")
            if storage == "btrfs":
                snapshot = BtrfsStorage(paths)
                took = _timed(lambda s=snapshot: s.remove_snapshot(s.create_snapshot("web0", "b")))
                print(f"{storage:>6}: read-only snapshot taken and deleted {took:.3f} s")


if __name__ == "__main__":
    main()
