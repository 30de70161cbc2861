"""Helpers for the monitor's tests and benchmark: a real SMTP server (aiosmtpd on loopback, an
ephemeral port) that records what it receives, and a fake host whose guests "run" on a
cgroup tree laid out like /sys/fs/cgroup in a temporary directory (VS_CGROUP_MOUNTS points the
monitor at it). The fake host is for fault injection and for more guests than fit on this
machine: the test writes the counters, holds each running guest's lock as a supervisor would,
and can plant a FIFO where a cgroup file should be (a read that hangs)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email import message_from_bytes
from pathlib import Path
from typing import Any

from vstools.runtime.state import process_start_time

GUEST_CONF = (
    "NAME={name}\nCONTEXT={context}\nIP=198.18.{a}.{b}\nRSS_LIMIT=100\nDISK_LIMIT=256\n"
    "TMPFS_LIMIT=8\nPROC_LIMIT=100\nCPU_LIMIT=1/2\n"
)
MB = 1 << 20


@dataclass
class Mail:
    subject: str
    to: list[str]
    body: str


class SmtpSink:
    """aiosmtpd on 127.0.0.1; stop() and start() again on the same port (server down/up)."""

    def __init__(self) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.mails: list[Mail] = []
        self._lock = threading.Lock()
        self._controller: Any = None

    def start(self) -> None:
        from aiosmtpd.controller import Controller

        sink = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                msg = message_from_bytes(envelope.content)
                body = msg.get_payload(decode=True)
                with sink._lock:
                    sink.mails.append(
                        Mail(
                            str(msg["Subject"]),
                            list(envelope.rcpt_tos),
                            body.decode() if isinstance(body, bytes) else str(body),
                        )
                    )
                return "250 OK"

        self._controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def subjects(self) -> list[str]:
        with self._lock:
            return [m.subject for m in self.mails]

    def wait_for(
        self, predicate: Callable[[list[str]], bool], timeout_s: float = 30.0
    ) -> list[str]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            subjects = self.subjects()
            if predicate(subjects):
                return subjects
            time.sleep(0.1)
        raise AssertionError(f"mails not as expected after {timeout_s} s: {self.subjects()}")

    def wait_subject(self, subject: str, timeout_s: float = 30.0) -> Mail:
        self.wait_for(lambda s: subject in s, timeout_s)
        with self._lock:
            return next(m for m in self.mails if m.subject == subject)


@dataclass
class FakeHost:
    """VS_* directories, a fake cgroup v1 tree and guests that look running."""

    root: Path
    parent: str = "vsfake"
    env: dict[str, str] = field(default_factory=dict)
    locks: dict[str, int] = field(default_factory=dict)

    CONTROLLERS = ("memory", "pids", "cpu", "cpuacct", "freezer")

    def __post_init__(self) -> None:
        dirs = {n: self.root / n for n in ("etc", "guests", "root", "state", "run", "cg")}
        for directory in dirs.values():
            directory.mkdir(parents=True, exist_ok=True)
        mounts = self.root / "mounts"
        mounts.write_text(
            "".join(f"cgroup {dirs['cg'] / c} cgroup rw,nosuid,{c} 0 0\n" for c in self.CONTROLLERS)
        )
        self.env = {
            "VS_ETC_DIR": str(dirs["etc"]),
            "VS_GUESTS_CONF_DIR": str(dirs["guests"]),
            "VS_ROOT_DIR": str(dirs["root"]),
            "VS_STATE_DIR": str(dirs["state"]),
            "VS_RUN_DIR": str(dirs["run"]),
            "VS_CGROUP_MOUNTS": str(mounts),
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        }

    def settings(self, text: str) -> None:
        (Path(self.env["VS_ETC_DIR"]) / "vs-tools.conf").write_text(
            f"HOSTNAME=vsh-fake\nCGROUP_PARENT={self.parent}\nSYSLOG=no\n{text}"
        )

    def cg(self, controller: str, name: str) -> Path:
        return self.root / "cg" / controller / self.parent / name

    def define(self, name: str, monitor_conf: str, index: int = 1) -> None:
        directory = Path(self.env["VS_GUESTS_CONF_DIR"]) / name
        directory.mkdir()
        (directory / "guest.conf").write_text(
            GUEST_CONF.format(name=name, context=index, a=index // 250, b=index % 250 + 1)
        )
        (directory / "monitor.conf").write_text(monitor_conf)
        (Path(self.env["VS_ROOT_DIR"]) / name).mkdir()
        files = {
            "memory": {
                "memory.usage_in_bytes": str(10 * MB),
                "memory.limit_in_bytes": str(100 * MB),
                "memory.failcnt": "0",
                "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
            },
            "pids": {"pids.current": "3", "pids.max": "100", "pids.events": "max 0\n"},
            "cpu": {"cpu.cfs_quota_us": "100000", "cpu.cfs_period_us": "100000"},
            "cpuacct": {"cpuacct.usage": "0", "tasks": ""},
            "freezer": {"freezer.state": "THAWED"},
        }
        for controller, content in files.items():
            group = self.cg(controller, name)
            group.mkdir(parents=True)
            for file, value in content.items():
                (group / file).write_text(value)

    def start(self, name: str, init_pid: int | None = None) -> None:
        """Look running: hold the guest's lock and write state.json, as a supervisor does."""
        run_dir = Path(self.env["VS_RUN_DIR"]) / "guests" / name
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.locks[name] = fd
        pid = init_pid or os.getpid()
        (run_dir / "state.json").write_text(
            json.dumps(
                {
                    "name": name,
                    "supervisor_pid": os.getpid(),
                    "supervisor_start": process_start_time(os.getpid()),
                    "init_pid": pid,
                    "started_at": time.time(),
                    "cgroup": f"{self.parent}/{name}",
                }
            )
        )

    def stop(self, name: str) -> None:
        os.close(self.locks.pop(name))

    def close(self) -> None:
        for name in list(self.locks):
            self.stop(name)

    def set(self, name: str, controller: str, file: str, value: str) -> None:
        path = self.cg(controller, name) / file
        tmp = path.with_name(file + ".tmp")
        tmp.write_text(value)
        os.replace(tmp, path)  # the monitor never reads half a value

    def rss_pct(self, name: str, pct: float) -> None:
        self.set(name, "memory", "memory.usage_in_bytes", str(int(pct * MB)))

    def hang(
        self, name: str, controller: str = "memory", file: str = "memory.usage_in_bytes"
    ) -> None:
        """Replace a cgroup file by a FIFO nobody writes: reading it blocks."""
        path = self.cg(controller, name) / file
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        os.mkfifo(path)

    def state_of(self, name: str) -> dict[str, Any] | None:
        path = Path(self.env["VS_STATE_DIR"]) / "monitor" / "guests" / f"{name}.json"
        try:
            data: dict[str, Any] = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            return None
        return data
