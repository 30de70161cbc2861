"""The vs-monitor daemon around ``vstools.monitor.Monitor``: APScheduler jobs, the mail thread,
signals and the systemd protocol (``Type=notify`` with a watchdog).

Threads: APScheduler runs one job, ``Rounds.tick``, every ``round_tick_s``: it starts the
checks that are due, each guest every MONITOR_POOLING seconds, on the monitor's check threads
(``vstools.monitor.workers``, where a check past its time limit is declared hung). One job per
guest, as before, cost APScheduler about 0.3 ms of CPU per check, half the monitor's budget with
1000 guests (docs/performance.md). The mailer delivers the spool; the main thread rescans the
configuration and pings the watchdog. The watchdog ping comes only from the main thread and only
when the scheduler runs, the mailer lives and checks make progress: a main loop stuck anywhere (a
configuration file on a dead NFS server, say) stops the pings, and systemd restarts the service
(TESTING M1)."""

from __future__ import annotations

import heapq
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC
from pathlib import Path
from types import FrameType

from vstools.host.mail import Mailer
from vstools.monitor.prometheus import export_textfile
from vstools.monitor.watch import RESCAN_S, Monitor

log = logging.getLogger("vstools.monitor")

# The Prometheus textfile is rewritten at most this often (node_exporter is scraped every 15 s
# or more; reading every guest's state file each second would cost more than it tells).
EXPORT_S = 10.0


def round_tick_s(monitor: Monitor) -> float:
    """How often the due checks are started, so how late one may run: a quarter of the
    shortest MONITOR_POOLING, 0.25 to 2 s. Each scheduler run costs about 0.3 ms of CPU, and
    checks started together run one after the other while the caches are still warm."""
    shortest = min((w.policy.pooling_s for w in monitor.watches.values()), default=60)
    return min(max(shortest / 4, 0.25), 2.0)


def notify(env: Mapping[str, str], message: str) -> bool:
    """sd_notify(3): send ``message`` to $NOTIFY_SOCKET; False outside a notify service."""
    address = env.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message.encode(), address)
    except OSError as exc:
        log.warning("cannot notify systemd at %s: %s", env.get("NOTIFY_SOCKET"), exc)
        return False
    return True


def watchdog_interval_s(env: Mapping[str, str]) -> float | None:
    """Half of WatchdogSec (systemd's advice), or None when no watchdog is asked for us."""
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(int(usec) / 2e6, 0.05)
    except ValueError:
        return None


def _raise_fd_limit() -> None:
    # Per watched guest, its lock file, sock_diag socket and cgroup counter files (7 or 8) stay
    # open: 1000 guests need more than the usual 1024 (cgroup files are kept only below half).
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def serve(monitor: Monitor, env: Mapping[str, str], *, rescan_s: float = RESCAN_S) -> int:
    """Run until SIGTERM or SIGINT; SIGHUP re-reads the configuration at once."""
    from apscheduler.executors.pool import ThreadPoolExecutor
    from apscheduler.schedulers.background import BackgroundScheduler

    _raise_fd_limit()
    stop = threading.Event()
    rescan_now = threading.Event()

    def on_stop(signum: int, frame: FrameType | None) -> None:
        """SIGTERM or SIGINT: end the main loop (the cleanup follows)."""
        stop.set()

    def on_hup(signum: int, frame: FrameType | None) -> None:
        """SIGHUP: rescan the configuration at the next tick."""
        rescan_now.set()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_hup)

    mailer = Mailer(monitor.spool)
    monitor.on_mail = mailer.wake.set
    scheduler = BackgroundScheduler(
        executors={"default": ThreadPoolExecutor(max_workers=1)},
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 30},
        timezone=UTC,
    )
    monitor.rescan()
    tick = round_tick_s(monitor)
    scheduler.add_job(Rounds(monitor).tick, "interval", seconds=tick, id="rounds")
    mailer.start()
    scheduler.start()
    ping_s = watchdog_interval_s(env)
    tick_s = min(ping_s, 1.0) if ping_s else 1.0
    notify(env, f"READY=1\nSTATUS=watching {len(monitor.watches)} guests")
    log.info("vs-monitor started: %d guests watched", len(monitor.watches))
    next_rescan = time.monotonic() + rescan_s
    exported = 0.0  # the check progress last exported
    next_export = time.monotonic()
    try:
        while not stop.is_set():
            if time.monotonic() >= next_export and monitor.last_progress != exported:
                exported = monitor.last_progress
                next_export = time.monotonic() + EXPORT_S
                write_textfile(monitor)
            if rescan_now.is_set() or time.monotonic() >= next_rescan:
                rescan_now.clear()
                monitor.rescan()
                if round_tick_s(monitor) != tick:
                    tick = round_tick_s(monitor)
                    scheduler.reschedule_job("rounds", trigger="interval", seconds=tick)
                next_rescan = time.monotonic() + rescan_s
            if ping_s and scheduler.running and mailer.is_alive() and monitor.healthy(time.time()):
                notify(env, "WATCHDOG=1")
            stop.wait(tick_s)
    finally:
        notify(env, "STOPPING=1")
        scheduler.shutdown(wait=False)
        monitor.workers.stop()
        mailer.stop()
        monitor.close()
        log.info("vs-monitor stopped")
    return 0


def write_textfile(monitor: Monitor) -> None:
    """Export every guest's figures to PROMETHEUS_TEXTFILE_DIR, if it is set and exists; a
    failure is logged, never fatal (Munin and the mails go on)."""
    setting = monitor.settings.prometheus_textfile_dir
    try:
        export_textfile(
            monitor.paths.monitor_figures_dir(),
            Path(setting) if setting else None,
            monitor.hostname,
            time.time(),
        )
    except OSError as exc:
        log.warning("cannot write the Prometheus textfile in %s: %s", setting, exc)


class Rounds:
    """When each watched guest is next due: its first check at ``Monitor.job_offset_s`` (spread
    over the first seconds), then every MONITOR_POOLING seconds; a round missed (the daemon
    stopped, a check still running or hung) is not made up, as APScheduler's coalesce did. A
    heap of due times: a tick looks at the guests that are due, not at every guest (scanning
    1000 guests twice a second cost 0.08 CPU-s per minute)."""

    def __init__(self, monitor: Monitor, clock: Callable[[], float] = time.monotonic) -> None:
        self.monitor = monitor
        self.clock = clock
        self.due: dict[str, tuple[float, float]] = {}  # guest -> (next check, its interval)
        self._heap: list[tuple[float, str]] = []  # (next check, guest); stale ones skipped
        self._generation = -1  # the monitor's watches last seen

    def _sync(self, now: float) -> None:
        watches = dict(self.monitor.watches)
        for name in [n for n in self.due if n not in watches]:
            del self.due[name]
        for name, watch in watches.items():
            pooling = watch.policy.pooling_s
            entry = self.due.get(name)
            if entry is None or entry[1] != pooling:  # new, or MONITOR_POOLING changed
                when = now + self.monitor.job_offset_s(name)
                self.due[name] = (when, pooling)
                heapq.heappush(self._heap, (when, name))

    def tick(self) -> None:
        """Start the checks that are due; declare hung the checks past their limit."""
        monitor = self.monitor
        monitor.workers.reap()
        now = self.clock()
        if monitor.generation != self._generation:
            self._generation = monitor.generation
            self._sync(now)
        heap = self._heap
        while heap and heap[0][0] <= now:
            when, name = heapq.heappop(heap)
            entry = self.due.get(name)
            if entry is None or entry[0] != when:
                continue  # dropped, or due at another time since
            pooling = entry[1]
            later = when + pooling if when + pooling > now else now + pooling
            self.due[name] = (later, pooling)
            heapq.heappush(heap, (later, name))
            monitor.start_check(name)
