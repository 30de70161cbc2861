"""The threads that run the monitor's checks: a few kept threads, each check with a time limit.

A check may hang (a cgroup or /proc file that blocks, a dead NFS server under a guest's root):
it must stop only its own guest (TESTING M8). The first design started a thread per check and
waited for it: with 1000 guests, 1000 thread starts a minute (0.13 ms of CPU each here), and 8
scheduler workers waiting in ``join`` contending for the GIL during each round (strace counted
217 000 futex calls in a minute). Here checks go to a queue served by kept threads, at most
``max_workers`` at once; a check past its limit is declared hung (logged, its guest skipped
until it returns) and its thread stops counting, so the next check gets a new thread: a hung
guest costs one thread, never the others' checks. When the hung check returns, its thread
ends."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("vstools.monitor")


@dataclass(slots=True)
class _Running:
    name: str
    started: float
    limit_s: float
    hung: bool = False


class CheckWorkers:
    """Runs ``check(name)`` on kept threads; ``start`` queues a check, ``reap`` declares the
    ones past their limit hung and adds a thread when the ones there are all stuck in slow
    checks. ``on_progress`` is called when a check ends or is declared hung (the watchdog's
    measure of progress)."""

    def __init__(
        self,
        check: Callable[[str], None],
        on_progress: Callable[[], None],
        *,
        max_workers: int = 4,
        slow_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._check = check
        self._on_progress = on_progress
        self._max_workers = max_workers
        self._slow_s = slow_s
        self._clock = clock
        self._queue: queue.SimpleQueue[tuple[str, float] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._running: dict[threading.Thread, _Running] = {}
        self._pending: set[str] = set()  # queued or running, hung ones included
        self._queued = 0  # in the queue, not yet taken by a thread
        self._workers = 0  # threads not stuck in a hung check
        self.hung: dict[str, threading.Thread] = {}  # guest -> the thread stuck in its check

    def busy(self, name: str) -> bool:
        """True while a check of ``name`` is queued, running or hung."""
        with self._lock:
            return name in self._pending

    def start(self, name: str, limit_s: float) -> bool:
        """Queue a check of ``name``; False (nothing queued) while its previous one is still
        queued, running or hung."""
        with self._lock:
            if name in self._pending:
                if name in self.hung:
                    log.warning("guest %s: previous check still hung; skipped", name)
                return False
            self._pending.add(name)
            self._queued += 1
            spawn = self._workers == 0
            self._workers += spawn
        self._queue.put((name, limit_s))
        if spawn:
            self._spawn()
        return True

    def reap(self) -> None:
        """Declare hung every check running past its limit (its thread no longer counts), and
        add a thread when checks wait while every thread is in a check slower than ``slow_s``:
        normally one thread runs every check, one after the other (a check takes well under a
        millisecond, and with the GIL more threads would only contend)."""
        now = self._clock()
        found = []
        with self._lock:
            for thread, run in self._running.items():
                if not run.hung and now - run.started > run.limit_s:
                    run.hung = True
                    self.hung[run.name] = thread
                    self._workers -= 1
                    found.append(run)
            busy = [r for r in self._running.values() if not r.hung]
            stuck = len(busy) >= self._workers and all(now - r.started > self._slow_s for r in busy)
            spawn = self._queued > 0 and self._workers < self._max_workers and stuck
            self._workers += spawn
        for run in found:
            log.error(
                "guest %s: check hung for more than %g s; other guests go on", run.name, run.limit_s
            )
            self._on_progress()
        if spawn:
            self._spawn()

    def wait(self, name: str, *, poll_s: float = 0.002) -> bool:
        """Wait until the check of ``name`` ends (True) or is declared hung (False)."""
        while True:
            with self._lock:
                if name in self.hung:
                    return False
                if name not in self._pending:
                    return True
            self.reap()
            time.sleep(poll_s)

    def stop(self) -> None:
        """Let the idle threads end (a thread stuck in a check is a daemon and is left)."""
        with self._lock:
            count = self._workers
        for _ in range(count):
            self._queue.put(None)

    def _spawn(self) -> None:
        threading.Thread(target=self._serve, name="vs-monitor-check", daemon=True).start()

    def _serve(self) -> None:
        me = threading.current_thread()
        while True:
            item = self._queue.get()
            if item is None:
                return
            name, limit_s = item
            with self._lock:
                self._queued -= 1
                self._running[me] = _Running(name, self._clock(), limit_s)
            try:
                self._check(name)
            finally:
                with self._lock:
                    run = self._running.pop(me)
                    self._pending.discard(name)
                    if run.hung:
                        del self.hung[name]
            if run.hung:
                log.info("guest %s: the hung check returned", name)
                return  # it was replaced when declared hung
            self._on_progress()
