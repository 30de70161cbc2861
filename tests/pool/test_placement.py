"""Placement's arithmetic (pure): the selectable slave that can hold the guest with the most
free memory, then disk, and a reason that says why the others were not chosen."""

from __future__ import annotations

from typing import Any

import pytest

from vstools.errors import StateError
from vstools.pool.placement import Need, rank, room_needed_mb, room_on, unfit

NEED = Need("web", "198.51.100.10", 101, 512)


def _report(
    mem_mb: int, disk_mb: int, guests: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    return {
        "host": {"mem_available_mb": mem_mb, "disk_free_mb": disk_mb,
                 "networks": ["0,198.51.100.0/24"]},
        "guests": guests or [],
    }  # fmt: skip


def test_the_most_free_memory_wins_and_the_reason_names_the_others() -> None:
    choice = rank(
        {"vsh-01": _report(8192, 10_000), "vsh-02": _report(14_540, 317_440),
         "vsh-03": _report(20_000, 10_000)},
        {"vsh-03"}, NEED, 100,
    )  # fmt: skip
    assert choice.host == "vsh-02"
    assert choice.reason == (
        "vsh-02 (free 14.2 GiB mem, 310.0 GiB disk; vsh-01 has 8.0 GiB; vsh-03 is noselect)"
    )


def test_equal_memory_then_disk_decides() -> None:
    choice = rank({"a": _report(4096, 100), "b": _report(4096, 900)}, set(), NEED, 10)
    assert choice.host == "b"


@pytest.mark.parametrize(
    ("report", "why"),
    [
        (_report(4096, 10_000, [{"name": "web"}]), "has a guest web"),
        (_report(4096, 10_000, [{"name": "db", "ip": "198.51.100.10"}]),
         "has 198.51.100.10 (db)"),
        (_report(4096, 10_000, [{"name": "db", "context": 101}]), "has context 101 (db)"),
        (_report(100, 10_000), "has 0.1 GiB memory free"),
        (_report(4096, 100), "disk free"),
    ],
)  # fmt: skip
def test_a_slave_that_cannot_hold_it_says_why(report: dict[str, Any], why: str) -> None:
    found = unfit(report, NEED, 200)
    assert found is not None and why in found


def test_no_network_for_the_address_and_memory_only_for_placement() -> None:
    report = _report(100, 10_000)
    report["host"]["networks"] = ["0,203.0.113.0/24"]
    assert unfit(report, NEED, 10) == "has no network for 198.51.100.10"
    report["host"]["networks"] = []
    assert unfit(report, NEED, 10, memory=False) is None
    assert room_needed_mb(1000) == 1116


def test_nothing_fits() -> None:
    with pytest.raises(StateError, match="no slave can take guest web: a has a guest web"):
        rank({"a": _report(4096, 10_000, [{"name": "web"}])}, set(), NEED, 10)


def test_on_lvm_the_room_is_a_volume_of_the_disk_limit() -> None:
    need = Need("web", "198.51.100.10", 101, 512, disk_limit_mb=2048)
    lvm = _report(4096, 1500)
    lvm["host"]["storage"] = "lvm"
    assert room_on(lvm["host"], need, 100) == 2048  # whatever its files use
    assert unfit(lvm, need, 100) == "has 1.5 GiB disk free, 2.0 GiB needed"
    assert unfit(_report(4096, 1500), need, 100) is None  # dir: its files and a margin
    assert room_on(lvm["host"], NEED, 100) == room_needed_mb(100)  # no limit known
