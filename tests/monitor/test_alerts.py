"""The monitor's pure parts with a fake clock: the alert state machine (start, reminders,
recovery, hysteresis, hits, events, state that survives a restart), the guest load average
arithmetic, the /proc/net parsers on fixture files, the mail text and the spool's order."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from harness.fakehost import SmtpSink
from vstools.host.mail import SmtpServer, Spool, compose
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
from vstools.monitor.sample import LoadAverage, listening_sockets, socket_changes


def rss(pct: float) -> Level:
    level = percent_level("rss", pct, 100, threshold_pct=90, hysteresis_pct=5, what="memory MB")
    assert level is not None
    return level


def run(book: AlertBook, values: list[float], *, repeat_s: float = 0) -> list[tuple[int, str]]:
    """Feed one value per second; the (second, reason) of every mail."""
    sent = []
    for second, value in enumerate(values):
        for notice in evaluate(book, now=float(second), repeat_s=repeat_s, levels=[rss(value)]):
            sent.append((second, notice.reason))
    return sent


def test_one_mail_when_it_starts_and_one_when_it_ends() -> None:
    assert run(AlertBook(), [50, 91, 95, 99, 93, 50, 50]) == [(1, "rss"), (5, "rss ok")]


def test_reminders_at_the_repeat_interval_while_it_lasts() -> None:
    sent = run(AlertBook(), [95] * 10 + [10], repeat_s=3)
    assert sent == [
        (0, "rss"),
        (3, "rss still"),
        (6, "rss still"),
        (9, "rss still"),
        (10, "rss ok"),
    ]


def test_repeat_zero_never_reminds() -> None:
    assert run(AlertBook(), [95] * 50, repeat_s=0) == [(0, "rss")]


def test_m4_flapping_around_the_threshold_is_one_incident() -> None:
    values = [89, 91] * 20 + [86, 84]  # never below 85 until the end
    assert run(AlertBook(), values) == [(1, "rss"), (41, "rss ok")]


def test_without_hysteresis_every_crossing_counts() -> None:
    book = AlertBook()
    levels = [Level("rss", v, 90, 90, "") for v in (89, 91, 89, 91)]
    reasons = [n.reason for lv in levels for n in evaluate(book, now=0, repeat_s=0, levels=[lv])]
    assert reasons == ["rss", "rss ok", "rss"]


def test_threshold_zero_or_no_limit_turns_the_check_off() -> None:
    assert percent_level("rss", 99, 100, threshold_pct=0, hysteresis_pct=5, what="x") is None
    assert percent_level("rss", 99, 0, threshold_pct=90, hysteresis_pct=5, what="x") is None
    assert load_level("load1", 9.0, None, 5) is None


def test_load_hysteresis_is_a_share_of_the_threshold() -> None:
    level = load_level("load5", 2.0, 2.0, 10)
    assert level is not None and level.start_at == 2.0 and level.end_below == pytest.approx(1.8)


def test_hits_start_on_a_new_hit_and_end_after_quiet_checks() -> None:
    book = AlertBook()
    reasons = []
    for second, new in enumerate([0, 2, 0, 1, 0, 0, 0, 0]):
        for n in evaluate(book, now=second, repeat_s=0, hits=[Hits("proc-hits", new, "")]):
            reasons.append((second, n.reason))
    assert reasons == [(1, "proc-hits"), (6, "proc-hits ok")]


def test_events_are_single_mails_without_state() -> None:
    book = AlertBook()
    notices = evaluate(book, now=5, repeat_s=60, events=[Event("sockets", "+ tcp 0.0.0.0:80")])
    assert [n.reason for n in notices] == ["sockets changed"] and book.active == {}


def test_stopped_ends_as_running() -> None:
    book = AlertBook()
    evaluate(book, now=0, repeat_s=0, levels=[Level("stopped", 1, 1, 1, "")])
    (notice,) = evaluate(book, now=1, repeat_s=0, levels=[Level("stopped", 0, 1, 1, "")])
    assert notice.reason == "running" and notice.since == 0


def test_the_book_survives_a_restart_through_json() -> None:
    book = AlertBook()
    evaluate(book, now=100, repeat_s=10, levels=[rss(95)])
    restored = AlertBook.from_json(json.loads(json.dumps(book.to_json())))
    assert evaluate(restored, now=105, repeat_s=10, levels=[rss(95)]) == []
    (reminder,) = evaluate(restored, now=110, repeat_s=10, levels=[rss(95)])
    assert reminder == Notice("rss", Phase.REPEAT, 100, reminder.detail)
    (end,) = evaluate(restored, now=111, repeat_s=10, levels=[rss(1)])
    assert end.reason == "rss ok"


def test_close_all_but_keeps_the_named_incidents() -> None:
    book = AlertBook()
    evaluate(book, now=0, repeat_s=0, levels=[rss(95), Level("disk", 95, 90, 85, "")])
    assert book.close_all_but(("stopped", "disk")) == ["rss"]
    assert set(book.active) == {"disk"}


def test_load_average_follows_the_kernels_recurrence() -> None:
    load = LoadAverage()
    load.update(0.0, {1: 0}, 0)  # baseline
    for second in range(1, 61):  # one thread runnable all the time for a minute
        load.update(float(second), {1: second * 10**9}, 0)
    assert load.load[0] == pytest.approx(1 - math.exp(-1), rel=1e-6)
    assert load.load[1] == pytest.approx(1 - math.exp(-60 / 300), rel=1e-6)
    assert load.load[2] == pytest.approx(1 - math.exp(-60 / 900), rel=1e-6)


def test_load_average_counts_threads_up_to_the_interval_and_blocked_ones() -> None:
    load = LoadAverage()
    load.update(0.0, {1: 0, 2: 0}, 0)
    # Thread 1 ran or waited the whole 10 s, thread 2 half of it, thread 3 is new and claims
    # more than the interval (clamped), and one thread sleeps in state D.
    load.update(10.0, {1: 10 * 10**9, 2: 5 * 10**9, 3: 99 * 10**9}, 1)
    mean = 1 + 0.5 + 1 + 1
    assert load.load[0] == pytest.approx(mean * (1 - math.exp(-10 / 60)))


PROC_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1
   1: 0100007F:1F91 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 2 1
"""
PROC_TCP6 = """\
  sl  local_address                         remote_address                        st
   0: 00000000000000000000000000000000:0016 00000000000000000000000000000000:0000 0A 0 0 0 0 0
"""
PROC_UDP = """\
   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
  0: 00000000:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 3 2
"""
PROC_UNIX = """\
Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00010000 0001 01 100 /run/app.sock
0000000000000000: 00000002 00000000 00010000 0001 01 101 @abstract
0000000000000000: 00000003 00000000 00000000 0001 03 102 /run/app.sock
0000000000000000: 00000002 00000000 00000000 0002 01 103
"""


def test_listening_sockets_from_a_guests_proc_net(tmp_path: Path) -> None:
    net = tmp_path / "42" / "net"
    net.mkdir(parents=True)
    for name, text in {
        "tcp": PROC_TCP,
        "tcp6": PROC_TCP6,
        "udp": PROC_UDP,
        "udp6": "header\n",
        "unix": PROC_UNIX,
    }.items():
        (net / name).write_text(text)
    found = listening_sockets(42, proc=str(tmp_path))
    assert found == {
        "tcp 127.0.0.1:8080",
        "tcp6 [::]:22",
        "udp 0.0.0.0:53",
        "unix /run/app.sock",
        "unix @abstract",
    }
    assert listening_sockets(42, r"^unix |:53$", proc=str(tmp_path)) == {
        "tcp 127.0.0.1:8080",
        "tcp6 [::]:22",
    }
    assert socket_changes({"tcp 1", "tcp 2"}, {"tcp 2", "tcp 3"}) == "+ tcp 3\n- tcp 1"


def test_spool_keeps_order_until_the_server_answers(tmp_path: Path) -> None:
    sink = SmtpSink()
    spool = Spool(tmp_path / "spool", SmtpServer("127.0.0.1", sink.port, timeout_s=2))
    for index in range(5):
        spool.enqueue(
            compose(
                sender="root@vsh",
                to=("admin@example.org",),
                subject=f"vsh:web:{index}",
                body="figures\n",
                message_id=f"<{index}@vsh>",
            )
        )
    sent, why = spool.deliver()  # nobody listens
    assert sent == 0 and why is not None and len(spool.pending()) == 5
    sink.start()
    try:
        assert spool.deliver() == (5, None)
        assert spool.deliver() == (0, None)
    finally:
        sink.stop()
    assert sink.subjects() == [f"vsh:web:{i}" for i in range(5)]
    assert spool.pending() == []
