"""Fixtures for tests that run real guests: a host tree (VS_* directories, vs-tools.conf with a
per-run cgroup parent), a busybox template built once per session, a static probe binary, and a
finalizer that stops every guest by its supervisor's PID and removes the cgroups, also when the
test fails."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from vstools.templates import build_busybox_rootfs

BIN = Path(sys.executable).parent
PROBE_SOURCE = Path(__file__).parent / "probe" / "vstprobe.c"
GUEST_CONF = (
    "NAME={name}\nCONTEXT={context}\nIP={ip}\nRSS_LIMIT={rss}\nDISK_LIMIT=256\n"
    "TMPFS_LIMIT={tmpfs}\nPROC_LIMIT={proc}\nCPU_LIMIT={cpu}\n"
)


@dataclass
class Host:
    """One test host: its directories and environment, and the guests defined on it."""

    root: Path
    env: dict[str, str]
    cgroup_parent: str
    template: Path
    probe: Path
    guests: list[str] = field(default_factory=list)

    @property
    def guests_dir(self) -> Path:
        return Path(self.env["VS_GUESTS_CONF_DIR"])

    def rootfs(self, name: str) -> Path:
        return Path(self.env["VS_ROOT_DIR"]) / name

    def define(
        self,
        name: str,
        ip: str,
        *,
        context: int | None = None,
        rss: int = 64,
        tmpfs: int = 8,
        proc: int = 64,
        cpu: str = "1/2",
    ) -> Path:
        """A guest from the busybox template, with the probe in /usr/bin."""
        shutil.copytree(self.template, self.rootfs(name), symlinks=True)
        shutil.copy2(self.probe, self.rootfs(name) / "usr" / "bin" / "vstprobe")
        directory = self.guests_dir / name
        directory.mkdir()
        (directory / "guest.conf").write_text(
            GUEST_CONF.format(
                name=name,
                ip=ip,
                context=context or 10000 + len(self.guests) + 1,
                rss=rss,
                tmpfs=tmpfs,
                proc=proc,
                cpu=cpu,
            )
        )
        self.guests.append(name)
        return directory

    def run(
        self,
        *argv: str,
        check: bool = True,
        input: str | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        """Run an installed vs-* command as an administrator would."""
        result = subprocess.run(
            [str(BIN / argv[0]), *argv[1:]],
            env=self.env,
            text=True,
            capture_output=True,
            input=input,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout}{result.stderr}"
            )
        return result

    def exec(self, name: str, *command: str, check: bool = True) -> str:
        return self.run("vs-exec", "-T", name, "--", *command, check=check).stdout

    def state(self, name: str) -> dict[str, object] | None:
        path = Path(self.env["VS_RUN_DIR"]) / "guests" / name / "state.json"
        try:
            data: dict[str, object] = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        return data

    def cgroup_dir(self, controller: str, name: str = "") -> Path:
        return Path("/sys/fs/cgroup") / controller / self.cgroup_parent / name


@pytest.fixture(scope="session")
def busybox_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_busybox_rootfs(tmp_path_factory.mktemp("template") / "rootfs")


@pytest.fixture(scope="session")
def probe_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("probe") / "vstprobe"
    subprocess.run(
        ["gcc", "-static", "-O1", "-o", str(target), str(PROBE_SOURCE)],
        check=True,
        capture_output=True,
    )
    return target


@pytest.fixture
def host(
    tmp_path: Path,
    etc_tree: dict[str, str],
    run_prefix: str,
    busybox_template: Path,
    probe_binary: Path,
) -> Iterator[Host]:
    """A test host on the etc_tree directories, with its own cgroup parent."""
    parent = f"{run_prefix}-{secrets_hex()}"
    (Path(etc_tree["VS_ETC_DIR"]) / "vs-tools.conf").write_text(
        f"CGROUP_PARENT={parent}\nSTOP_TIMEOUT=5\nHOSTNAME=vsh-test\n"
    )
    env = dict(etc_tree, VS_NO_SYSTEMD="1")
    test_host = Host(tmp_path, env, parent, busybox_template, probe_binary)
    yield test_host
    _teardown(test_host)


def secrets_hex() -> str:
    return os.urandom(2).hex()


def _teardown(test_host: Host) -> None:
    """Stop every guest by its supervisor's PID, then make sure no process, cgroup or mount of
    this host is left."""
    for name in test_host.guests:
        state = test_host.state(name)
        if state is None:
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(str(state["supervisor_pid"])), signal.SIGTERM)
    deadline = time.monotonic() + 15
    while any(test_host.state(n) for n in test_host.guests) and time.monotonic() < deadline:
        time.sleep(0.05)
    for controller in ("memory", "pids", "cpu", "cpuacct", "freezer", "unified"):
        top = test_host.cgroup_dir(controller)
        if not top.exists():
            continue
        for child in sorted(top.rglob("*"), reverse=True):
            if child.is_dir():
                _kill_and_remove(child)
        _kill_and_remove(top)


def _kill_and_remove(directory: Path) -> None:
    with contextlib.suppress(OSError):
        freezer = directory / "freezer.state"
        if freezer.exists():
            freezer.write_text("THAWED")
    for _ in range(100):
        try:
            pids = [int(p) for p in (directory / "cgroup.procs").read_text().split()]
        except FileNotFoundError:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        try:
            directory.rmdir()
            return
        except OSError:
            time.sleep(0.02)
