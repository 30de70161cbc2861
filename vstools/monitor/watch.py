"""vs-monitor: the host watches its guests and mails MONITOR_MAILTO (DESIGN §9).

One check of a guest reads its cgroup counters, the guest's own /proc tables and the size of
its root filesystem (never running anything of the guest), turns them into figures, feeds them
to the pure alert logic (``vstools.alerts``) and spools the mails that come out of it
(``vstools.mail``). Each guest's figures, open incidents and counters are saved in
``STATE_DIR/monitor/guests/NAME.json`` (alert state survives restarts; the Munin plugin reads the
figures from there, without root). A guest is watched by one daemon at a time: each holds an
flock on ``RUN_DIR/monitor/NAME.lock`` for the guests it watches.

The daemon (``serve``) starts each guest's check every MONITOR_POOLING seconds. Checks run on
a few kept threads (``vstools.monitor.workers``), each within ``check_timeout_s``: a check stuck
on a hung file stops only its own guest (logged, retried once the stuck thread returns), never
the others (TESTING M8). The main thread rescans the configuration (every RESCAN_S, and on
SIGHUP) and, only while it runs and checks make progress, pings the systemd watchdog (M1)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email import message_from_string
from email.policy import default
from pathlib import Path
from typing import Any

from vstools.config.guest import GuestConf
from vstools.config.monitor import MonitorConf
from vstools.config.settings import Settings
from vstools.errors import VSError
from vstools.guest.limits import disk_used_bytes, tmpfs_used_bytes
from vstools.host.cgroup import Cgroup
from vstools.host.cgrouplayout import CgroupLayout
from vstools.host.fsutil import atomic_write, swap_write, take_lock
from vstools.host.hostconfig import HostConfig, list_guests, load_guest
from vstools.host.mail import SmtpServer, Spool, compose
from vstools.host.sockdiag import ListeningSockets
from vstools.monitor.alerts import (
    AlertBook,
    Event,
    Hits,
    Level,
    Notice,
    Phase,
    evaluate,
    load_level,
    percent_level,
)
from vstools.monitor.sample import (
    Figures,
    LoadAverage,
    bytes_mb,
    listening_sockets,
    read_runnable,
    socket_changes,
)
from vstools.monitor.workers import CheckWorkers
from vstools.paths import Paths
from vstools.runtime.state import StateReader

log = logging.getLogger("vstools.monitor")

DISK_INTERVAL_S = 300.0  # walking a root filesystem is the costly figure: at most every 5 min
RESCAN_S = 60.0


def monitor_dir(paths: Paths) -> Path:
    """The monitor's state directory: ``guests/`` (figures and alert state) and ``spool/``."""
    return paths.state_dir / "monitor"


def check_timeout_s(pooling_s: float) -> float:
    """How long one check may take before it counts as hung: twice the interval, 5 to 60 s."""
    return min(max(2.0 * pooling_s, 5.0), 60.0)


@dataclass(slots=True)
class Watch:
    """One watched guest: its configuration and everything the checks remember."""

    name: str
    conf: GuestConf
    policy: MonitorConf
    stamp: tuple[float, ...]
    lock_fd: int
    book: AlertBook = field(default_factory=AlertBook)
    load: LoadAverage = field(default_factory=LoadAverage)
    seen_running: bool = False
    init_pid: int | None = None
    counters: dict[str, int] = field(default_factory=dict)
    sockets: list[str] | None = None
    sockets_pending: list[str] | None = None
    diag: ListeningSockets = field(default_factory=ListeningSockets)  # not saved: a socket
    disk_mb: float = 0.0
    disk_time: float | None = None
    figures: Figures | None = None
    outbox: list[tuple[str, str]] = field(default_factory=list)  # mails not yet spooled
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Kept from check to check (not saved): state.json parsed once per start of the guest,
    # the cgroup with its file paths built once and its counter files open, per run.
    state: StateReader | None = None
    cgroup: Cgroup | None = None

    def close_files(self) -> None:
        """Close what the checks keep open: the sock_diag socket and the cgroup's files."""
        self.diag.close()
        if self.cgroup is not None:
            self.cgroup.close()
            self.cgroup = None

    def memory_json(self) -> dict[str, Any]:
        """What the checks remember (sockets, counters, load, mails not yet spooled), to save."""
        return {
            "seen_running": self.seen_running,
            "init_pid": self.init_pid,
            "counters": self.counters,
            "sockets": self.sockets,
            "sockets_pending": self.sockets_pending,
            "load": self.load.to_json(),
            "outbox": [list(mail) for mail in self.outbox],
        }

    def restore(self, data: Mapping[str, Any]) -> None:
        """Take back the alert book and the memory saved in the guest's state file."""
        memory = data.get("memory", {})
        self.book = AlertBook.from_json(data.get("alerts", {}))
        self.seen_running = bool(memory.get("seen_running", False))
        self.init_pid = memory.get("init_pid")
        self.counters = {k: int(v) for k, v in memory.get("counters", {}).items()}
        self.sockets = memory.get("sockets")
        self.sockets_pending = memory.get("sockets_pending")
        self.load = LoadAverage.from_json(memory.get("load", {}))
        self.outbox = [(str(n), str(t)) for n, t in memory.get("outbox", [])]


class Monitor:
    """The guests one monitor watches, their checks and their mails."""

    def __init__(
        self,
        paths: Paths,
        settings: Settings,
        hostname: str,
        layout: CgroupLayout,
        *,
        names: list[str] | None = None,
        spool: Spool | None = None,
        dry_run: bool = False,
        clock: Callable[[], float] = time.time,
        on_mail: Callable[[], None] | None = None,
    ) -> None:

        self.paths = paths
        self.settings = settings
        # Only for what the storage backends need (guest.conf files are read again at each
        # reload: they change while the daemon runs).
        self.host = HostConfig(paths, settings)
        self.hostname = hostname
        self.layout = layout
        self.names = names  # None: every guest defined on the host
        self.dry_run = dry_run
        self.clock = clock
        self.spool = spool or Spool(
            monitor_dir(paths) / "spool", SmtpServer(settings.smtp_host, settings.smtp_port)
        )
        self.on_mail = on_mail
        self.watches: dict[str, Watch] = {}
        self.generation = 0  # counts the changes of ``watches`` (the daemon's Rounds follow it)
        self.skipped: dict[str, str] = {}  # guest -> why it is not watched (logged once)
        self.workers = CheckWorkers(self._guarded, self._progress)
        self.last_progress = clock()
        self.sender = settings.mail_from or f"root@{hostname}"
        self.dry_notices: list[tuple[str, Notice]] = []
        paths.monitor_figures_dir().mkdir(parents=True, exist_ok=True)
        self._figures_dir = str(paths.monitor_figures_dir())
        (paths.run_dir / "monitor").mkdir(parents=True, exist_ok=True)

    # -- which guests --------------------------------------------------------------------------

    def rescan(self) -> None:
        """Follow the configuration: new guests are watched, removed ones dropped, changed
        files re-read. A broken file or a guest watched by another daemon is logged once."""

        wanted = list_guests(self.paths) if self.names is None else list(self.names)
        for name in list(self.watches):
            if name not in wanted:
                self._drop(name)
        for name in wanted:
            stamp = self._stamp(name)
            watch = self.watches.get(name)
            if watch is not None and watch.stamp == stamp:
                continue
            try:
                files = load_guest(self.paths, name)
            except VSError as exc:
                self._skip(name, f"{exc}")
                continue
            if watch is not None:
                watch.conf, watch.policy, watch.stamp = files.conf, files.monitor, stamp
                self.generation += 1
                log.info("guest %s: configuration re-read", name)
                continue
            lock_fd = self._lock(name)
            if lock_fd is None:
                self._skip(name, "watched by another vs-monitor")
                continue
            watch = Watch(name, files.conf, files.monitor, stamp, lock_fd)
            self._restore(watch)
            if watch.outbox and not self.dry_run:
                log.info("guest %s: spooling %d mail(s) of the last run", name, len(watch.outbox))
                self._spool_outbox(watch)
            self.watches[name] = watch
            self.generation += 1
            self.skipped.pop(name, None)
            log.info("guest %s: watched every %d s", name, files.monitor.pooling_s)

    def _stamp(self, name: str) -> tuple[float, ...]:
        # guest_dir without pathlib (the names are valid: list_guests or --name checked them)
        directory = f"{self.paths.guests_conf_dir}/{name}"
        stamps = []
        for file in ("guest.conf", "monitor.conf"):
            try:
                stamps.append(os.stat(f"{directory}/{file}").st_mtime)
            except OSError:
                stamps.append(0.0)
        return tuple(stamps)

    def _skip(self, name: str, why: str) -> None:
        if self.skipped.get(name) != why:
            log.warning("guest %s not watched: %s", name, why)
        self.skipped[name] = why

    def _lock(self, name: str) -> int | None:
        return take_lock(self.paths.run_dir / "monitor" / f"{name}.lock")

    def _drop(self, name: str) -> None:
        watch = self.watches.pop(name)
        self.generation += 1
        os.close(watch.lock_fd)
        # Its socket and cgroup files are closed under the watch's lock: a check running on
        # another thread would otherwise read a descriptor number that may already name
        # another file. A check holding it closes them itself as it ends (``check``).
        if watch.lock.acquire(blocking=False):
            try:
                watch.close_files()
            finally:
                watch.lock.release()
        log.info("guest %s: no longer watched", name)

    def close(self) -> None:
        """Stop watching every guest, releasing their locks."""
        for name in list(self.watches):
            self._drop(name)

    def _state_file(self, name: str) -> str:
        return f"{self._figures_dir}/{name}.json"  # a string: pathlib cost more than the write

    def _restore(self, watch: Watch) -> None:
        path = self._state_file(watch.name)
        try:
            watch.restore(json.loads(Path(path).read_text()))
        except FileNotFoundError:
            pass
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            log.warning("guest %s: state %s unreadable, starting afresh: %s", watch.name, path, exc)

    def _save(self, watch: Watch, *, durable: bool) -> None:
        if self.dry_run:
            return
        data = {
            "guest": watch.name,
            "host": self.hostname,
            "pooling_s": watch.policy.pooling_s,
            "figures": watch.figures.to_json() if watch.figures else None,
            "alerts": watch.book.to_json(),
            "memory": watch.memory_json(),
        }
        # Compact: json's C encoder serves only this form (indented, its Python encoder took
        # a fifth of a check under cProfile).
        text = json.dumps(data, separators=(",", ":"))
        if durable:
            atomic_write(self._state_file(watch.name), text, mode=0o644)
        else:
            # Figures change every check: they are replaced without the fsyncs (a power cut
            # may lose the last figures, never an alert, which is saved durably), and in the
            # same two inodes (making a file was most of a check's CPU).
            swap_write(self._state_file(watch.name), text, mode=0o644)

    # -- one check -----------------------------------------------------------------------------

    def check(self, name: str) -> list[Notice]:
        """Check one guest now: figures, alerts, mails spooled, state saved."""
        watch = self.watches[name]
        with watch.lock:
            try:
                notices, figures = self._observe(watch)
                watch.figures = figures
                mails = [self._mail(watch, notice, figures) for notice in notices]
                watch.outbox = [m for m in mails if m is not None]
                if watch.outbox:
                    # The new alert state and its mails are saved together first (fsynced), then
                    # the mails are spooled: a daemon killed in between spools them at its restart
                    # (replay_outbox) instead of losing them or announcing the incidents again.
                    self._save(watch, durable=True)
                    self._spool_outbox(watch)
                self._save(watch, durable=False)
            finally:
                if self.watches.get(name) is not watch:
                    watch.close_files()  # dropped during the check: _drop left them to it
        return notices

    def _spool_outbox(self, watch: Watch) -> None:
        for name, text in watch.outbox:
            if not self.spool.known(name):  # spooled or already sent: once is enough
                self.spool.enqueue(message_from_string(text, policy=default), name=name)
        if watch.outbox and self.on_mail is not None:
            self.on_mail()
        watch.outbox = []

    def _observe(self, watch: Watch) -> tuple[list[Notice], Figures]:
        conf, policy = watch.conf, watch.policy
        now = self.clock()
        if watch.state is None:
            watch.state = StateReader(self.paths.guest_run_dir(watch.name))
        state = watch.state.read()
        fig = Figures(
            time=now,
            running=state is not None,
            rss_limit_mb=conf.rss_limit_mb,
            proc_limit=conf.proc_limit,
            disk_limit_mb=conf.disk_limit_mb,
            tmpfs_limit_mb=conf.tmpfs_limit_mb,
        )
        if watch.disk_time is None or now - watch.disk_time >= DISK_INTERVAL_S:
            watch.disk_mb = bytes_mb(disk_used_bytes(self.host, conf))
            watch.disk_time = now
        fig.disk_mb = watch.disk_mb
        levels: list[Level | None] = []
        hits: list[Hits] = []
        events: list[Event] = []
        if state is None:
            if watch.cgroup is not None:
                watch.cgroup.close()  # its files, kept open, would hold the removed group's
                watch.cgroup = None
            watch.load.reset()
            fig.load = (0.0, 0.0, 0.0)
            closed = []
            if watch.seen_running and "stopped" not in watch.book.active:
                closed = watch.book.close_all_but(("stopped", "disk"))
            detail = "the guest is stopped: no supervisor holds its lock"
            if closed:
                detail += f"; open alerts closed with it: {', '.join(closed)}"
            levels.append(Level("stopped", 1.0 if watch.seen_running else 0.0, 1.0, 1.0, detail))
        else:
            new_run = state.init_pid != watch.init_pid
            watch.seen_running = True
            watch.init_pid = fig.init_pid = state.init_pid
            if new_run or watch.cgroup is None or watch.cgroup.relpath != state.cgroup:
                if watch.cgroup is not None:
                    watch.cgroup.close()
                watch.cgroup = Cgroup(self.layout, state.cgroup, keep_open=True)
            self._read_cgroup(fig, watch.cgroup, watch, now)
            with contextlib.suppress(OSError):
                fig.tmpfs_mb = bytes_mb(tmpfs_used_bytes(state.init_pid))
            levels.append(
                Level("stopped", 0.0, 1.0, 1.0, f"the guest runs (init pid {state.init_pid})")
            )
            hits = self._hits(watch, fig, new_run, policy)
            if policy.sockets:
                event = self._sockets(watch, fig, state.init_pid, policy.sockets_filter)
                if event is not None:
                    events.append(event)
            h = policy.hysteresis_pct
            levels += [
                percent_level(
                    "rss",
                    fig.rss_mb,
                    fig.rss_limit_mb,
                    threshold_pct=policy.rss_threshold_pct,
                    hysteresis_pct=h,
                    what="memory MB",
                ),
                percent_level(
                    "proc",
                    fig.processes,
                    fig.proc_limit,
                    threshold_pct=policy.proc_threshold_pct,
                    hysteresis_pct=h,
                    what="processes",
                ),
                percent_level(
                    "tmpfs",
                    fig.tmpfs_mb,
                    fig.tmpfs_limit_mb,
                    threshold_pct=policy.tmpfs_threshold_pct,
                    hysteresis_pct=h,
                    what="/tmp MB",
                ),
                load_level("load1", fig.load[0], policy.loadavg_1_threshold, h),
                load_level("load5", fig.load[1], policy.loadavg_5_threshold, h),
                load_level("load15", fig.load[2], policy.loadavg_15_threshold, h),
            ]
        levels.append(
            percent_level(
                "disk",
                fig.disk_mb,
                fig.disk_limit_mb,
                threshold_pct=policy.disk_threshold_pct,
                hysteresis_pct=policy.hysteresis_pct,
                what="disk MB",
            )
        )
        notices = evaluate(
            watch.book,
            now=now,
            repeat_s=policy.repeat_s,
            levels=[lv for lv in levels if lv is not None],
            hits=hits,
            events=events,
        )
        return notices, fig

    def _read_cgroup(self, fig: Figures, cgroup: Cgroup, watch: Watch, now: float) -> None:
        fig.rss_mb = bytes_mb(cgroup.memory_usage_bytes())
        limit = cgroup.memory_limit_bytes()
        if limit is not None:
            fig.rss_limit_mb = bytes_mb(limit)
        fig.processes = cgroup.pids_current()
        fig.proc_limit = cgroup.pids_limit() or fig.proc_limit
        fig.cpu_s = cgroup.cpu_usage_ns() / 1e9
        fig.rss_hits = cgroup.memory_hits()
        fig.oom_kills = cgroup.oom_kills()
        fig.proc_hits = cgroup.pids_hits()
        watch.load.update(now, *read_runnable(cgroup.threads()))
        fig.load = (watch.load.load[0], watch.load.load[1], watch.load.load[2])

    def _hits(self, watch: Watch, fig: Figures, new_run: bool, policy: MonitorConf) -> list[Hits]:
        now_counts = {"rss": fig.rss_hits, "oom": fig.oom_kills, "proc": fig.proc_hits}
        before = {} if new_run else watch.counters
        new = {k: max(0, v - before.get(k, v)) for k, v in now_counts.items()}
        watch.counters = now_counts
        hits = []
        if policy.rss_hits:
            hits.append(
                Hits(
                    "rss-hits",
                    new["rss"] + new["oom"],
                    f"memory limit hit {new['rss']} times and {new['oom']} processes killed by"
                    f" the OOM killer since the last check (totals: {fig.rss_hits} hits,"
                    f" {fig.oom_kills} OOM kills)",
                )
            )
        if policy.proc_hits:
            hits.append(
                Hits(
                    "proc-hits",
                    new["proc"],
                    f"process limit hit {new['proc']} times since the last check (forks"
                    f" refused; total {fig.proc_hits})",
                )
            )
        return hits

    def _sockets(
        self, watch: Watch, fig: Figures, init_pid: int, ignore: str | None
    ) -> Event | None:
        current = sorted(listening_sockets(init_pid, ignore, diag=watch.diag))
        fig.sockets = tuple(current)
        if watch.sockets is None:
            watch.sockets = current  # first sight: the baseline, no mail
            return None
        if current == watch.sockets:
            watch.sockets_pending = None
            return None
        if watch.sockets_pending != current:
            # A change is reported once it holds for two checks in a row: a service
            # restarting (close, then open again) is not worth two mails.
            watch.sockets_pending = current
            return None
        changes = socket_changes(set(watch.sockets), set(current))
        watch.sockets, watch.sockets_pending = current, None
        return Event("sockets", f"listening sockets changed:\n{changes}")

    # -- mail ----------------------------------------------------------------------------------

    def _mail(self, watch: Watch, notice: Notice, fig: Figures) -> tuple[str, str] | None:
        """The mail of ``notice`` as (spool file name, text); None with --dry-run."""
        subject = f"{self.hostname}:{watch.name}:{notice.reason}"
        if self.dry_run:
            self.dry_notices.append((subject, notice))
            return None
        body = render_body(self.hostname, watch.name, notice, fig, watch.book)
        name = self.spool.new_name()
        msg = compose(
            sender=self.sender,
            to=watch.policy.mailto,
            subject=subject,
            body=body,
            message_id=f"<vs-monitor.{name.removesuffix('.eml')}.{watch.name}@{self.hostname}>",
        )
        log.info("alert %s", subject)
        return name, msg.as_string()

    # -- checks with a time limit --------------------------------------------------------------

    @property
    def hung(self) -> dict[str, threading.Thread]:
        """Guests whose check is stuck past its time limit, with the thread stuck in it."""
        return self.workers.hung

    def start_check(self, name: str) -> bool:
        """Queue a check of ``name`` on the check threads (``vstools.monitor.workers``); False
        while its previous check is still queued, running or hung."""
        watch = self.watches.get(name)
        if watch is None:
            return False
        return self.workers.start(name, check_timeout_s(watch.policy.pooling_s))

    def run_check(self, name: str) -> None:
        """Check ``name`` now and wait until it ends or counts as hung (--once)."""
        if self.start_check(name):
            self.workers.wait(name)

    def _progress(self) -> None:
        self.last_progress = self.clock()

    def _guarded(self, name: str) -> None:
        if name not in self.watches:
            return  # dropped by a rescan while its check waited in the queue
        try:
            self.check(name)
        except (VSError, OSError) as exc:
            log.error("guest %s: check failed: %s", name, exc)
        except Exception:
            log.exception("guest %s: check failed", name)

    def healthy(self, now: float) -> bool:
        """Checks make progress: one finished (or timed out) within three of the longest
        intervals plus a time limit."""
        if not self.watches:
            return True
        longest = max(w.policy.pooling_s for w in self.watches.values())
        return now - self.last_progress < 3 * longest + check_timeout_s(longest)

    def job_offset_s(self, name: str) -> float:
        """Spread the first checks over the first seconds (a stable offset per guest)."""
        pooling = self.watches[name].policy.pooling_s
        return (zlib.crc32(name.encode()) % 1000) / 1000 * min(pooling, 5.0)


def render_body(host: str, name: str, notice: Notice, fig: Figures, book: AlertBook) -> str:
    """The mail: what happened, then the figures of this check."""
    when = time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(notice.since))
    heading = {
        Phase.START: "started",
        Phase.REPEAT: "still going on (reminder)",
        Phase.END: "ended",
        Phase.EVENT: "happened",
    }[notice.phase]
    lines = [
        f"Guest {name} on host {host}: {notice.kind} {heading}.",
        "",
        notice.detail,
        "",
        f"Since: {when}" + (f" ({_duration(fig.time - notice.since)})" if notice.since else ""),
        f"Open alerts now: {', '.join(sorted(book.active)) or 'none'}",
        "",
        "Figures of this check:",
    ]
    if not fig.running:
        lines.append("  state       stopped")
    else:
        lines += [
            f"  state       running (init pid {fig.init_pid})",
            f"  memory      {fig.rss_mb:.1f} / {fig.rss_limit_mb:g} MB"
            f" ({_pct(fig.rss_mb, fig.rss_limit_mb)})",
            f"  processes   {fig.processes} / {fig.proc_limit}"
            f" ({_pct(fig.processes, fig.proc_limit)})",
            f"  /tmp        {fig.tmpfs_mb:.1f} / {fig.tmpfs_limit_mb:g} MB",
            f"  load        {fig.load[0]:.2f} {fig.load[1]:.2f} {fig.load[2]:.2f}",
            f"  cpu used    {fig.cpu_s:.1f} s",
            f"  limit hits  memory {fig.rss_hits}, OOM kills {fig.oom_kills},"
            f" processes {fig.proc_hits}",
        ]
        if fig.sockets:
            lines.append("  listening   " + "\n              ".join(fig.sockets))
    lines.append(f"  disk        {fig.disk_mb:.1f} / {fig.disk_limit_mb:g} MB")
    lines += ["", "-- ", "vs-monitor"]
    return "\n".join(lines) + "\n"


def _pct(used: float, limit: float) -> str:
    return f"{100 * used / limit:.0f}%" if limit else "no limit"


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"
