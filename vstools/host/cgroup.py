"""The one module that touches cgroup files: a guest's limits, counters, freezer and kill switch.

Operations are named by meaning and mapped to cgroup v1 or v2 files. Every file goes through
``Cgroup._read`` and ``Cgroup._write`` (the seam: tests fake it, errors name the file, the value
and the errno). Every host path comes from a ``CgroupLayout``, so tests point it at a temporary
tree laid out like ``/sys/fs/cgroup``.

v1 file mapping (``<controller root>/<relpath>/``) and v2 (``<cgroup2 root>/<relpath>/``):

    operation             v1                                        v2
    memory limit          memory.limit_in_bytes (-1 = unlimited)    memory.max (max)
    memory usage          memory.usage_in_bytes                     memory.current
    memory hits           memory.failcnt                            memory.events: max
    oom kills             memory.oom_control: oom_kill              memory.events: oom_kill
    pids limit/current    pids.max / pids.current                   pids.max / pids.current
    pids hits             pids.events: max                          pids.events: max
    cpu limit             cpu.cfs_period_us + cpu.cfs_quota_us      cpu.max "QUOTA PERIOD"
    cpu usage             cpuacct.usage (ns)                        cpu.stat: usage_usec * 1000
    threads               tasks (cpuacct)                           cgroup.threads
    freeze / thaw         freezer.state FROZEN / THAWED             cgroup.freeze 1 / 0,
                                                                    cgroup.events: frozen
    kill                  cgroup.kill on the cgroup2 mirror, else   cgroup.kill
                          freeze + SIGKILL each pid + thaw

On a v1 host that also mounts cgroup2 (a "hybrid" host such as the development machine, where
``/sys/fs/cgroup/unified`` has no controllers), the group is mirrored under that mount: create,
add_pid and destroy include it, and kill() uses its ``cgroup.kill``, which reaches every process
atomically, including ones forked during the kill. Freezing stays on the v1 freezer controller.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from vstools.config.values import CpuRatio
from vstools.errors import HostError, InvalidName, RollbackError, StateError
from vstools.host.cgrouplayout import (
    CFS_PERIOD_US,
    V1_CONTROLLERS,
    V2_CONTROLLERS,
    CgroupLayout,
    CgroupVersion,
    Controller,
    KeptFiles,
    cfs_quota_us,
    errno_text,
    inherit_cpuset,
    keyed,
    or_max,
    read_file,
    write_file,
)

_POLL_INTERVAL_S = 0.01
_COMPONENT = re.compile(r"[A-Za-z0-9._@-]+")


# v1 reports "unlimited" as PAGE_COUNTER_MAX pages in bytes: 2**63 - 4096 with 4 KiB pages, less
# with larger pages. No real limit comes near 2**62 bytes (4 EiB), so anything above is unlimited.
_V1_UNLIMITED_FROM = 2**62
# Files of many records (one per process or thread), opened and read to their end at each read:
# cgroup v1 keeps their list per open file (a kept descriptor read from 0 showed no new task).
_LISTS = frozenset(("tasks", "cgroup.procs", "cgroup.threads"))


class Cgroup:
    """One guest's cgroup at ``relpath`` (such as ``vs-tools/web``) under every hierarchy."""

    def __init__(
        self,
        layout: CgroupLayout,
        relpath: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        send_signal: Callable[[int, int], None] = os.kill,
        keep_open: bool = False,
    ) -> None:
        parts = relpath.split("/")
        for part in parts:
            # An empty part catches a leading "/", "//" and a trailing "/".
            if part in ("", ".", "..") or not _COMPONENT.fullmatch(part):
                raise InvalidName(
                    f"cgroup path {relpath!r}: components must be made of A-Z a-z 0-9 . _ @ - "
                    "and must not be empty, '.' or '..'"
                )
        self.layout = layout
        self.relpath = relpath
        self._parts = parts
        self._v2 = layout.version is CgroupVersion.V2
        self._clock = clock
        self._sleep = sleep
        self._send_signal = send_signal
        # The files read so far, as strings: the monitor reads the same nine files of each
        # guest every check, and building each path anew with pathlib cost more than the read.
        self._files: dict[tuple[Controller, str, int | None], str] = {}
        # keep_open (the monitor): counter files stay open between reads; close() ends that.
        self._kept = KeptFiles() if keep_open else None

    def __repr__(self) -> str:
        return f"Cgroup({self.relpath!r}, {self.layout.version})"

    def close(self) -> None:
        """Close the files ``keep_open`` kept (the group itself is untouched)."""
        if self._kept is not None:
            self._kept.close()

    # -- paths and the seam ------------------------------------------------------------------

    def _root(self, controller: Controller) -> Path:
        if self._v2 or controller is Controller.CGROUP2:
            if self.layout.cgroup2_root is None:
                raise HostError(f"cgroup {self.relpath}: this host has no cgroup2 mount")
            return self.layout.cgroup2_root
        return self.layout.v1_roots[controller]

    def _path(self, controller: Controller, name: str = "", depth: int | None = None) -> Path:
        """The group's directory (or an ancestor's: ``depth`` parts of relpath) or a file in it."""
        parts = self._parts if depth is None else self._parts[:depth]
        directory = self._root(controller).joinpath(*parts)
        return directory / name if name else directory

    def _controllers(self) -> list[Controller]:
        """The hierarchies this group lives in, one controller per distinct directory."""
        if self._v2:
            return [Controller.CGROUP2]
        wanted = list(V1_CONTROLLERS)
        if self.layout.cgroup2_root is not None:
            wanted.append(Controller.CGROUP2)
        seen: dict[Path, Controller] = {}
        for controller in wanted:
            # cpu and cpuacct are often co-mounted ("cpu,cpuacct"): one directory, once.
            seen.setdefault(self._root(controller), controller)
        return list(seen.values())

    def directories(self) -> list[Path]:
        """The group's directory in every hierarchy it uses (the ones it only joins last)."""
        return [self._path(c) for c in self._controllers()] + self._membership_dirs()

    def _membership_dirs(self, depth: int | None = None) -> list[Path]:
        """The group's directory in the v1 hierarchies it only joins (see CgroupLayout)."""
        parts = self._parts if depth is None else self._parts[:depth]
        if self._v2:
            return []
        return [root.joinpath(*parts) for root in self.layout.membership_roots]

    def _read(self, controller: Controller, name: str, *, depth: int | None = None) -> str:
        path = self._files.get((controller, name, depth))
        if path is None:
            path = self._files[controller, name, depth] = str(self._path(controller, name, depth))
        try:
            if self._kept is not None and name not in _LISTS:
                return self._kept.read(path).rstrip("\n")
            return read_file(path).rstrip("\n")
        except OSError as exc:
            raise HostError(f"cannot read {path}: {errno_text(exc)}") from exc

    def _write(
        self,
        controller: Controller,
        name: str,
        value: str,
        *,
        depth: int | None = None,
        why: Mapping[int, str] | None = None,
    ) -> None:
        path = self._path(controller, name, depth)
        try:
            write_file(path, value)
        except OSError as exc:
            hint = (why or {}).get(exc.errno or 0)
            message = f"cannot write {value!r} to {path}: {errno_text(exc)}"
            raise HostError(f"{message}: {hint}" if hint else message) from exc

    def _exists(self, controller: Controller, name: str = "") -> bool:
        path = self._path(controller, name)
        return path.exists() if name else path.is_dir()

    def _make_dir(self, path: Path) -> bool:
        """mkdir; False when it already is a directory."""
        try:
            path.mkdir()
        except FileExistsError:
            if path.is_dir():
                return False
            raise
        return True

    def _int(self, controller: Controller, name: str, key: str | None = None) -> int:
        text = self._read(controller, name)
        value = keyed(text).get(key) if key is not None else text.strip()
        try:
            return int(value or "")
        except ValueError:
            what = f"field {key!r} in " if key is not None else ""
            raise HostError(
                f"unexpected content in {what}{self._path(controller, name)}: {text!r}"
            ) from None

    def _limit(self, controller: Controller, name: str) -> int | None:
        """A v2-style limit: "max" is None, else an integer."""
        if self._read(controller, name).strip() == "max":
            return None
        return self._int(controller, name)

    # -- life cycle --------------------------------------------------------------------------

    def exists(self) -> bool:
        """True when the group's directory exists in every hierarchy it uses."""
        return all(self._exists(c) for c in self._controllers())

    def create(self) -> None:
        """Create the group in every hierarchy (idempotent); on v2 first enable memory, pids and
        cpu for the children of each ancestor. Directories made here are removed on failure."""
        created: list[Path] = []
        try:
            for controller in self._controllers():
                directory = self._root(controller)
                for index, part in enumerate(self._parts):
                    if self._v2:
                        self._enable_subtree_controllers(depth=index)
                    directory = directory / part
                    try:
                        if self._make_dir(directory):
                            created.append(directory)
                    except OSError as exc:
                        raise HostError(
                            f"cannot create cgroup directory {directory}: {errno_text(exc)}"
                        ) from exc
            for root in [] if self._v2 else self.layout.membership_roots:
                directory = root
                for part in self._parts:
                    parent, directory = directory, directory / part
                    try:
                        if self._make_dir(directory):
                            created.append(directory)
                            inherit_cpuset(parent, directory)
                    except OSError as exc:
                        raise HostError(
                            f"cannot create cgroup directory {directory}: {errno_text(exc)}"
                        ) from exc
        except HostError as exc:
            left = self._remove_dirs(reversed(created))
            if left:
                raise RollbackError(f"{exc}; rollback left {', '.join(left)}") from exc
            undone = f"; removed {len(created)} directories made here" if created else ""
            raise HostError(f"{exc}{undone}") from exc

    def _enable_subtree_controllers(self, depth: int) -> None:
        # v2's subtree_control of every ancestor must list a controller before a child group can
        # use it. Only controllers that are offered and not already on are written, so a
        # delegated tree whose upper levels we may not write keeps working. Enabling is not
        # undone on failure: siblings may rely on it, and it is harmless.
        cg2 = Controller.CGROUP2
        offered = set(self._read(cg2, "cgroup.controllers", depth=depth).split())
        subtree = self._read(cg2, "cgroup.subtree_control", depth=depth)
        enabled = {token.lstrip("+") for token in subtree.split()}
        wanted = [c for c in V2_CONTROLLERS if c in offered and c not in enabled]
        if wanted:
            self._write(
                cg2,
                "cgroup.subtree_control",
                " ".join("+" + c for c in wanted),
                depth=depth,
                why={
                    errno.EBUSY: f"{self._path(cg2, depth=depth)} holds processes itself, and v2 "
                    "allows controllers only in groups without processes of their own",
                },
            )

    def _remove_dirs(self, directories: Iterable[Path]) -> list[str]:
        left = []
        for directory in directories:
            try:
                directory.rmdir()
            except FileNotFoundError:
                pass
            except OSError as exc:
                left.append(f"{directory} ({errno_text(exc)})")
        return left

    def destroy(self) -> None:
        """Remove the group's leaf directories (idempotent); StateError if processes remain."""
        remaining = self.pids()
        if remaining:
            raise StateError(
                f"cgroup {self.relpath} is not empty: pids {', '.join(map(str, remaining))} "
                "still run in it; stop or kill them first"
            )
        left = self._remove_dirs(
            [*self._membership_dirs(), *(self._path(c) for c in reversed(self._controllers()))]
        )
        if left:
            raise HostError(
                f"cannot remove cgroup {self.relpath}: {'; '.join(left)} "
                "(a group with child groups or live processes cannot be removed)"
            )

    def add_pid(self, pid: int) -> None:
        """Move process ``pid`` (all its threads) into the group in every hierarchy."""
        for directory in self._membership_dirs():
            path = directory / "cgroup.procs"
            try:
                write_file(path, str(pid))
            except OSError as exc:
                raise HostError(f"cannot write {pid} to {path}: {errno_text(exc)}") from exc
        for controller in self._controllers():
            # cgroup.procs moves the whole thread group; "tasks" (v1) would move one thread.
            self._write(
                controller,
                "cgroup.procs",
                str(pid),
                why={
                    errno.ESRCH: f"no process {pid}",
                    errno.EBUSY: "v2 forbids processes in a group whose subtree_control is set",
                },
            )

    def pids(self) -> list[int]:
        """Processes in the group (the union over its hierarchies), sorted; [] if it is gone."""
        return sorted({pid for c in self._controllers() for pid in self._pids_in(c)})

    def threads(self) -> list[int]:
        """Thread ids in the group (v1 ``tasks`` of the cpuacct hierarchy, v2
        ``cgroup.threads``), for the monitor's load average; [] if the group is gone."""
        controller = Controller.CGROUP2 if self._v2 else Controller.CPUACCT
        name = "cgroup.threads" if self._v2 else "tasks"
        try:
            text = self._read(controller, name)
        except HostError:
            if not self._exists(controller):
                return []
            raise
        return [int(t) for t in text.split()]

    # -- limits ------------------------------------------------------------------------------

    def set_memory_limit(self, limit_bytes: int | None) -> None:
        """Cap the group's memory at ``limit_bytes`` (None: unlimited)."""
        if limit_bytes is not None and limit_bytes < 0:
            raise ValueError(f"memory limit must not be negative: {limit_bytes}")
        if self._v2:
            if limit_bytes is not None:
                self._v2_reclaim_to(limit_bytes)
            self._write(Controller.CGROUP2, "memory.max", or_max(limit_bytes))
            return
        # v1 reclaims down to a lowered limit and answers EBUSY when it cannot (anonymous memory
        # without swap); v2 would OOM-kill instead. memory.memsw.* is left alone: with swap, a
        # v1 guest may swap beyond this limit.
        self._write(
            Controller.MEMORY,
            "memory.limit_in_bytes",
            "-1" if limit_bytes is None else str(limit_bytes),
            why={
                errno.EBUSY: "the kernel (cgroup v1) will not lower the limit below the group's "
                "current usage and could not reclaim enough; free memory in the guest first",
                errno.EINVAL: "v1 needs memory.memsw.limit_in_bytes >= memory.limit_in_bytes",
            },
        )

    def _v2_reclaim_to(self, limit_bytes: int) -> None:
        # A v2 memory.max below the usage makes the kernel reclaim and then OOM-kill the group's
        # processes until it fits (found in the VM lab: a guest with 12 MB on its /tmp lost its
        # init to `vs-limit --rss 8`). memory.high reclaims the same way but never kills: set
        # it to the new limit, put it back, and refuse like v1's EBUSY if the usage did not fit.
        cg2 = Controller.CGROUP2
        if self.memory_usage_bytes() <= limit_bytes:
            return
        high = self._read(cg2, "memory.high").strip()
        self._write(cg2, "memory.high", str(limit_bytes))
        try:
            usage = self.memory_usage_bytes()
        finally:
            self._write(cg2, "memory.high", high)
        if usage > limit_bytes:
            raise HostError(
                f"cannot lower {self._path(cg2, 'memory.max')} to {limit_bytes}: the group still "
                f"uses {usage} bytes after reclaim (tmpfs files, or anonymous memory without "
                "swap), and cgroup v2 would OOM-kill its processes to fit; free memory in the "
                "guest first"
            )

    def set_pids_limit(self, max_pids: int | None) -> None:
        """Cap the number of processes and threads in the group (None: unlimited)."""
        if max_pids is not None and max_pids < 0:
            raise ValueError(f"pids limit must not be negative: {max_pids}")
        self._write(Controller.PIDS, "pids.max", or_max(max_pids))

    def set_cpu_limit(self, ratio: CpuRatio | None, cpu_count: int) -> None:
        """Give the group ``ratio`` of ``cpu_count`` CPUs as a CFS quota (None: unlimited)."""
        self.set_cpu_quota(None if ratio is None else cfs_quota_us(ratio, cpu_count))

    def set_cpu_quota(self, quota: int | None) -> None:
        """A CFS quota in microseconds per 100 ms period (None: unlimited)."""
        if self._v2:
            self._write(Controller.CPU, "cpu.max", f"{or_max(quota)} {CFS_PERIOD_US}")
            return
        # Period first: the kernel checks each write's quota/period pair against the parent, so
        # with the period already ours only the quota write changes the group's bandwidth.
        self._write(Controller.CPU, "cpu.cfs_period_us", str(CFS_PERIOD_US))
        self._write(
            Controller.CPU,
            "cpu.cfs_quota_us",
            "-1" if quota is None else str(quota),
            why={errno.EINVAL: "v1 refuses a quota above the parent group's CPU bandwidth"},
        )

    # -- readers -----------------------------------------------------------------------------

    def memory_usage_bytes(self) -> int:
        """Memory charged to the group now (v1 memory.usage_in_bytes, v2 memory.current)."""
        if self._v2:
            return self._int(Controller.CGROUP2, "memory.current")
        return self._int(Controller.MEMORY, "memory.usage_in_bytes")

    def memory_limit_bytes(self) -> int | None:
        """The memory limit in bytes, or None when unlimited."""
        if self._v2:
            return self._limit(Controller.CGROUP2, "memory.max")
        value = self._int(Controller.MEMORY, "memory.limit_in_bytes")
        return None if value >= _V1_UNLIMITED_FROM else value

    def memory_hits(self) -> int:
        """How often usage ran into the limit and had to reclaim: v1 memory.failcnt (failed
        charges), v2 the ``max`` field of memory.events. Not a count of OOM kills."""
        if self._v2:
            return self._int(Controller.CGROUP2, "memory.events", "max")
        return self._int(Controller.MEMORY, "memory.failcnt")

    def oom_kills(self) -> int:
        """Processes the OOM killer killed in the group (the ``oom_kill`` field)."""
        if self._v2:
            return self._int(Controller.CGROUP2, "memory.events", "oom_kill")
        return self._int(Controller.MEMORY, "memory.oom_control", "oom_kill")

    def pids_current(self) -> int:
        """Processes and threads in the group now."""
        return self._int(Controller.PIDS, "pids.current")

    def pids_limit(self) -> int | None:
        """The pids limit, or None when unlimited."""
        return self._limit(Controller.PIDS, "pids.max")

    def pids_hits(self) -> int:
        """Forks refused because of the pids limit (pids.events ``max``)."""
        return self._int(Controller.PIDS, "pids.events", "max")

    def cpu_usage_ns(self) -> int:
        """CPU time used by the group in nanoseconds."""
        if self._v2:
            # cpu.stat exists without the cpu controller, but only in microseconds.
            return self._int(Controller.CGROUP2, "cpu.stat", "usage_usec") * 1000
        return self._int(Controller.CPUACCT, "cpuacct.usage")

    def cpu_limit(self) -> tuple[int, int] | None:
        """The CFS (quota, period) in microseconds, or None when unlimited."""
        if self._v2:
            text = self._read(Controller.CGROUP2, "cpu.max")
            match = re.fullmatch(r"\s*(max|\d+)\s+(\d+)\s*", text)
            if match is None:
                raise HostError(f"unexpected content in {self._path(Controller.CPU, 'cpu.max')}")
            return None if match[1] == "max" else (int(match[1]), int(match[2]))
        quota = self._int(Controller.CPU, "cpu.cfs_quota_us")
        return None if quota < 0 else (quota, self._int(Controller.CPU, "cpu.cfs_period_us"))

    # -- freezer and kill --------------------------------------------------------------------

    def _freezer_state(self) -> str:
        """FROZEN, FREEZING or THAWED (v2's cgroup.events knows only frozen or not)."""
        if self._v2:
            frozen = keyed(self._read(Controller.CGROUP2, "cgroup.events")).get("frozen")
            return "FROZEN" if frozen == "1" else "THAWED"
        # A v1 group also reads FROZEN/FREEZING when an ancestor is frozen.
        return self._read(Controller.FREEZER, "freezer.state").strip()

    def _request_frozen(self, frozen: bool) -> None:
        if self._v2:
            self._write(Controller.CGROUP2, "cgroup.freeze", "1" if frozen else "0")
        else:
            self._write(Controller.FREEZER, "freezer.state", "FROZEN" if frozen else "THAWED")

    def _wait_until(self, done: Callable[[], bool], deadline: float) -> bool:
        while True:
            if done():
                return True
            if self._clock() >= deadline:
                return False
            self._sleep(_POLL_INTERVAL_S)

    def is_frozen(self) -> bool:
        """True once every process in the group is frozen (FREEZING is not frozen)."""
        return self._freezer_state() == "FROZEN"

    def freeze(self, timeout_s: float = 5.0) -> None:
        """Freeze every process in the group and wait until the kernel reports it frozen."""
        # Freezing is asynchronous on both versions: each task stops at its next return to
        # user space, and one in uninterruptible sleep keeps v1 in FREEZING.
        self._request_frozen(True)
        if not self._wait_until(self.is_frozen, self._clock() + timeout_s):
            state = self._freezer_state()
            self._request_frozen(False)
            raise HostError(
                f"cgroup {self.relpath} did not freeze within {timeout_s} s (state {state}); "
                "thawed it again"
            )

    def thaw(self, timeout_s: float = 5.0) -> None:
        """Let the group's processes run again."""
        self._request_frozen(False)
        if not self._wait_until(
            lambda: self._freezer_state() == "THAWED", self._clock() + timeout_s
        ):
            raise HostError(f"cgroup {self.relpath} did not thaw within {timeout_s} s")

    def _is_empty(self) -> bool:
        if self._v2:
            # "populated" covers nested groups too, which the group's cgroup.procs does not.
            try:
                events = keyed(self._read(Controller.CGROUP2, "cgroup.events"))
            except HostError:
                if not self._exists(Controller.CGROUP2):
                    return True  # removed meanwhile: empty
                raise
            return events.get("populated") == "0"
        return not self.pids()

    def kill(self, timeout_s: float = 5.0) -> None:
        """SIGKILL every process in the group and wait until it is empty (StateError if not)."""
        deadline = self._clock() + timeout_s
        cg2 = Controller.CGROUP2
        if self.layout.cgroup2_root is not None and self._exists(cg2, "cgroup.kill"):
            # cgroup.kill (Linux 5.14+) reaches every task atomically, forks in flight included.
            try:
                self._write(cg2, "cgroup.kill", "1")
            except HostError:
                if self._exists(cg2):
                    raise
                # Gone meanwhile: its processes ended and the supervisor removed it.
            if self._v2:
                self._wait_until(self._is_empty, deadline)
            else:
                self._wait_until(lambda: not self._pids_in(cg2), deadline)
        # Without cgroup.kill, and on v1 for processes that never joined the cgroup2 mirror.
        self._kill_with_freezer(deadline)
        self._raise_if_not_empty(timeout_s)

    def _pids_in(self, controller: Controller) -> list[int]:
        try:
            text = self._read(controller, "cgroup.procs")
        except HostError:
            # A group that is gone has no process: also one removed between two reads, as its
            # supervisor does once a kill has ended its processes.
            if not self._exists(controller):
                return []
            raise
        return [int(t) for t in text.split()]

    def _kill_with_freezer(self, deadline: float) -> None:
        # Freeze so nothing forks or exits while we read cgroup.procs (the pids stay valid: a
        # frozen task cannot exit, so no pid is reused), SIGKILL each, then thaw, because a
        # frozen v1 task only dies once thawed (v2 lets SIGKILL through; thawing is harmless).
        # Repeat for tasks that a timed-out freeze let slip through.
        while not self._is_empty() and self._clock() < deadline:
            self._request_frozen(True)
            self._wait_until(self.is_frozen, deadline)  # best effort: kill what we can see
            for pid in self.pids():
                with contextlib.suppress(ProcessLookupError):  # it exited meanwhile
                    self._send_signal(pid, signal.SIGKILL)
            self._request_frozen(False)
            self._wait_until(self._is_empty, min(deadline, self._clock() + 0.2))

    def _raise_if_not_empty(self, timeout_s: float) -> None:
        if not self._is_empty():
            remaining = ", ".join(map(str, self.pids())) or "in child groups"
            raise StateError(
                f"cgroup {self.relpath}: processes still running {timeout_s} s after "
                f"SIGKILL: pids {remaining}"
            )
