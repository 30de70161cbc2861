"""What the monitor reads about one guest: cgroup counters, /proc, the guest's own network
tables. Read-only, and nothing of the guest is ever executed (TESTING M7): every figure comes
from the host kernel's files, or (the listening TCP sockets) from a sock_diag dump in the
guest's network namespace.

**Load average of a guest.** The kernel's load average is host-wide. A guest's own figure is
computed here the same way the kernel does it (kernel/sched/loadavg.c), from the guest's tasks
only: an exponentially decayed mean of the number of tasks that are runnable (running or
waiting for a CPU) or in uninterruptible sleep, with time constants of 1, 5 and 15 minutes.

The kernel samples the count every 5 s. A sample every 5 s per guest would cost too much with
hundreds of guests, so the monitor measures the *mean* runnable count over the whole interval
since its previous check instead, exactly: ``/proc/TID/schedstat`` gives, per thread, the time
spent on a CPU and the time spent waiting in a run queue, and the growth of their sum over an
interval divided by its length is the mean number of runnable tasks (each thread's share
clamped to the interval). Tasks in uninterruptible sleep (state D) are counted as seen at the
check. Then, for an interval of Δt seconds and a time constant τ (60, 300, 900 s)::

    load = load · e^(−Δt/τ) + n̄ · (1 − e^(−Δt/τ))

which is the kernel's recurrence (``load = load·e + n·(1−e)`` with ``e = e^(−5/τ)``) folded over
Δt/5 steps of a count held at n̄. A guest busy with one CPU-bound task converges to 1.00, two
tasks sharing one allowed CPU (a CPU limit) to 2.00, as in the kernel's figure.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from vstools.host.fsutil import read_bytes, read_record
from vstools.host.sockdiag import KINDS, sockets_listening

TAU_S = (60.0, 300.0, 900.0)

# /proc/net/tcp "st" column: 0A is TCP_LISTEN; a bound UDP socket is 07 (TCP_CLOSE).
_TCP_LISTEN = "0A"
_UDP_UNCONNECTED = "07"
# /proc/net/unix "Flags" column: __SO_ACCEPTCON (the socket listens).
_SO_ACCEPTCON = 0x10000


@dataclass(slots=True)
class Figures:
    """One check's figures of one guest: what mails quote and Munin graphs."""

    time: float
    running: bool
    init_pid: int | None = None
    rss_mb: float = 0.0
    rss_limit_mb: float = 0.0
    processes: int = 0
    proc_limit: int = 0
    cpu_s: float = 0.0
    rss_hits: int = 0
    oom_kills: int = 0
    proc_hits: int = 0
    disk_mb: float = 0.0
    disk_limit_mb: float = 0.0
    tmpfs_mb: float = 0.0
    tmpfs_limit_mb: float = 0.0
    load: tuple[float, float, float] = (0.0, 0.0, 0.0)
    sockets: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The figures as JSON-ready data: the load rounded to 4 decimals, tuples as lists."""
        data = {name: getattr(self, name) for name in _FIGURE_FIELDS}  # asdict deep-copies
        data["load"] = [round(v, 4) for v in self.load]
        data["sockets"] = list(self.sockets)
        return data


_FIGURE_FIELDS = tuple(f.name for f in fields(Figures))


@dataclass(slots=True)
class LoadAverage:
    """The decayed 1/5/15-minute means of one guest's runnable tasks (see the module doc)."""

    load: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    last_time: float | None = None
    last_ns: dict[int, int] = field(default_factory=dict)

    def update(self, now: float, runnable_ns: dict[int, int], blocked: int) -> None:
        """Fold in one sample: per thread, its schedstat run+wait nanoseconds; and the number
        of threads in uninterruptible sleep now."""
        if self.last_time is not None and now > self.last_time:
            interval_s = now - self.last_time
            limit_ns = interval_s * 1e9
            busy_ns = 0.0
            for tid, total in runnable_ns.items():
                delta = total - self.last_ns.get(tid, 0)
                busy_ns += min(max(delta, 0), limit_ns)
            mean = busy_ns / limit_ns + blocked
            for index, tau in enumerate(TAU_S):
                decay = math.exp(-interval_s / tau)
                self.load[index] = self.load[index] * decay + mean * (1 - decay)
        self.last_time = now
        self.last_ns = runnable_ns

    def reset(self) -> None:
        """Start afresh (the guest is stopped): the load back to zero, no baseline."""
        self.load = [0.0, 0.0, 0.0]
        self.last_time = None
        self.last_ns = {}

    def to_json(self) -> dict[str, Any]:
        """The decayed load and the last sample's time; the per-thread counters are not saved."""
        return {"load": self.load, "last_time": self.last_time}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LoadAverage:
        """The load ``to_json`` saved, with no baseline yet."""
        # Per-thread counters are not kept across restarts: the first check after a restart
        # only takes a new baseline, and the decayed figures carry on from there.
        return cls([float(v) for v in data.get("load", [0, 0, 0])][:3], None, {})


def read_runnable(threads: list[int], proc: str = "/proc") -> tuple[dict[int, int], int]:
    """Per thread, run + run-queue wait time in ns (schedstat), and how many are in state D."""
    runnable: dict[int, int] = {}
    blocked = 0
    for tid in threads:
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = read_record(f"{proc}/{tid}/schedstat").split()
            runnable[tid] = int(fields[0]) + int(fields[1])
            stat = read_record(f"{proc}/{tid}/stat")
            if stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3] == b"D":
                blocked += 1
    return runnable, blocked


def _ipv4(hex_addr: str) -> str:
    # /proc/net/tcp prints the address as the in-memory u32, so little-endian on x86.
    raw = int(hex_addr, 16).to_bytes(4, "little")
    return ".".join(str(b) for b in raw)


def _ipv6(hex_addr: str) -> str:
    import ipaddress

    words = [int(hex_addr[i : i + 8], 16).to_bytes(4, "little") for i in range(0, 32, 8)]
    return str(ipaddress.IPv6Address(b"".join(words)))


def _inet(proto: str, local: str) -> str:
    addr, port = local.split(":")
    if proto.endswith("6"):
        return f"{proto} [{_ipv6(addr)}]:{int(port, 16)}"
    return f"{proto} {_ipv4(addr)}:{int(port, 16)}"


def listening_sockets(
    pid: int,
    ignore: str | None = None,
    proc: str = "/proc",
    diag: Callable[[int], tuple[set[str], list[str]]] = sockets_listening,
) -> set[str]:
    """The listening sockets of the network namespace of ``pid`` (the guest's init), as text:
    ``tcp 0.0.0.0:22``, ``tcp6 [::]:80``, ``udp 0.0.0.0:53``, ``unix /run/x.sock`` (``unix
    @name`` for abstract ones). Asked of the kernel with sock_diag dumps in its namespace when
    ``proc`` is the real /proc (``diag``; a ``ListeningSockets`` keeps its socket between
    checks), else, and for the kinds the kernel cannot dump, read from its own /proc/PID/net
    tables. Sockets matching the regular expression ``ignore`` (SOCKETS_FILTER, searched) are
    left out."""
    found: set[str] = set()
    kinds = list(KINDS)
    if proc == "/proc":
        # The kernel walks its whole TCP hash table to print /proc/PID/net/tcp (3.5 ms of
        # CPU per file here); sock_diag lists the listening sockets alone.
        with contextlib.suppress(OSError):
            found, kinds = diag(pid)
    for proto in [k for k in kinds if k != "unix"]:
        try:
            lines = read_bytes(f"{proc}/{pid}/net/{proto}").decode().splitlines()[1:]
        except OSError:
            continue
        wanted = _TCP_LISTEN if proto.startswith("tcp") else _UDP_UNCONNECTED
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[3] == wanted:
                found.add(_inet(proto, fields[1]))
    if "unix" in kinds:
        with contextlib.suppress(OSError):
            unix = read_bytes(f"{proc}/{pid}/net/unix").decode(errors="replace")
            for line in unix.splitlines()[1:]:
                fields = line.split()
                # Num RefCount Protocol Flags Type St Inode [Path]
                if len(fields) >= 8 and int(fields[3], 16) & _SO_ACCEPTCON:
                    found.add(f"unix {fields[7]}")
    if ignore:
        pattern = re.compile(ignore)
        found = {s for s in found if not pattern.search(s)}
    return found


def socket_changes(old: set[str], new: set[str]) -> str:
    """What changed, one socket a line: ``+ tcp 0.0.0.0:80`` opened, ``- ...`` closed."""
    lines = [f"+ {s}" for s in sorted(new - old)] + [f"- {s}" for s in sorted(old - new)]
    return "\n".join(lines)


def bytes_mb(value: float) -> float:
    """Bytes in MB (2**20 bytes)."""
    return value / (1 << 20)
