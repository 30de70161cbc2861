"""The monitor's check threads (vstools.monitor.workers) and the rounds that start the checks
(vstools.monitor.daemon.Rounds): kept threads, a time limit per check, a hung check replaced
and its guest skipped until it returns (M8), each guest due every MONITOR_POOLING seconds."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest

from vstools.monitor.daemon import Rounds, round_tick_s
from vstools.monitor.workers import CheckWorkers


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _wait(predicate: Any, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline
        time.sleep(0.005)


def test_checks_run_one_after_the_other_on_one_kept_thread() -> None:
    threads: list[threading.Thread] = []
    progress: list[int] = []
    workers = CheckWorkers(
        lambda name: threads.append(threading.current_thread()), lambda: progress.append(1)
    )
    for _ in range(3):
        for name in ("a", "b", "c"):
            assert workers.start(name, 5.0)
            assert workers.wait(name)
    assert len(threads) == 9 and len(set(threads)) == 1
    assert len(progress) >= 9
    workers.stop()


def test_a_hung_check_is_declared_replaced_and_skipped_until_it_returns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    release = threading.Event()
    ran: list[str] = []

    def check(name: str) -> None:
        if name == "bad":
            release.wait(10)
        ran.append(name)

    workers = CheckWorkers(check, lambda: None, clock=clock)
    assert workers.start("bad", 5.0)
    _wait(lambda: workers.busy("bad"))
    assert workers.start("good", 5.0)  # queued behind the stuck thread
    clock.now += 2.0  # slower than slow_s: a second thread takes the queue
    workers.reap()
    assert workers.wait("good") and ran == ["good"]
    assert not workers.start("bad", 5.0)  # still running: not queued twice
    clock.now += 4.0
    workers.reap()
    assert "bad" in workers.hung
    assert "guest bad: check hung for more than 5 s; other guests go on" in caplog.text
    assert not workers.start("bad", 5.0)
    assert "guest bad: previous check still hung; skipped" in caplog.text
    for _ in range(3):  # the others go on
        assert workers.start("good", 5.0) and workers.wait("good")
    release.set()
    _wait(lambda: not workers.busy("bad"))
    assert "bad" not in workers.hung
    assert workers.start("bad", 5.0) and workers.wait("bad")
    workers.stop()


def test_wait_returns_false_for_a_check_past_its_limit() -> None:
    clock = Clock()
    release = threading.Event()
    workers = CheckWorkers(lambda name: release.wait(10), lambda: None, clock=clock)
    assert workers.start("bad", 5.0)
    _wait(lambda: workers.busy("bad"))
    timer = threading.Timer(0.05, lambda: setattr(clock, "now", clock.now + 6.0))
    timer.start()
    assert workers.wait("bad") is False and "bad" in workers.hung
    release.set()
    workers.stop()


def test_rounds_start_each_guest_every_interval_from_its_offset() -> None:
    clock = Clock()
    started: list[tuple[float, str]] = []
    policy = {"web": SimpleNamespace(pooling_s=10), "db": SimpleNamespace(pooling_s=30)}
    monitor = SimpleNamespace(
        watches={name: SimpleNamespace(policy=p) for name, p in policy.items()},
        generation=1,
        workers=SimpleNamespace(reap=lambda: None),
        job_offset_s=lambda name: {"web": 1.0, "db": 2.0}[name],
        start_check=lambda name: started.append((clock.now, name)) or True,
    )
    rounds = Rounds(monitor, clock)  # type: ignore[arg-type]
    for _ in range(130):  # 65 s in ticks of 0.5 s
        rounds.tick()
        clock.now += 0.5
    web = [t - 100 for t, n in started if n == "web"]
    db = [t - 100 for t, n in started if n == "db"]
    assert web == [1.0, 11.0, 21.0, 31.0, 41.0, 51.0, 61.0]
    assert db == [2.0, 32.0, 62.0]
    policy["web"].pooling_s = 5  # a new MONITOR_POOLING starts from a new offset
    del monitor.watches["db"]
    monitor.generation += 1
    started.clear()
    for _ in range(24):
        rounds.tick()
        clock.now += 0.5
    assert [t - 165 for t, n in started] == [1.0, 6.0, 11.0]
    assert list(rounds.due) == ["web"]


@pytest.mark.parametrize(
    ("poolings", "tick"), [((), 2.0), ((60, 300), 2.0), ((4, 60), 1.0), ((1,), 0.25)]
)
def test_the_tick_is_a_quarter_of_the_shortest_interval(
    poolings: tuple[int, ...], tick: float
) -> None:
    watches = {
        f"g{i}": SimpleNamespace(policy=SimpleNamespace(pooling_s=p))
        for i, p in enumerate(poolings)
    }
    assert round_tick_s(SimpleNamespace(watches=watches)) == tick  # type: ignore[arg-type]
