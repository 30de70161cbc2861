"""Where vs-move's final pass reads a stopped guest (pure, with fake slaves): in place on dir
and btrfs; on lvm, whose stopped volume is not mounted, a read-only snapshot taken for it,
named to the push as ``snapshot:TAG``, then dropped (a failed drop is noted, not fatal)."""

from __future__ import annotations

from typing import Any

from vstools.errors import HostError
from vstools.pool.move import MoveReport, _Move
from vstools.pool.ops import SNAPSHOT_TAG


class FakeSlave:
    host = "vsh-01"

    def __init__(self, *, failing: str = "") -> None:
        self.calls: list[tuple[str, ...]] = []
        self.failing = failing

    def call(self, function: str, *args: str) -> Any:
        self.calls.append((function, *args))
        if function == self.failing:
            raise HostError("lvremove: Logical volume in use")
        return f"/vservers/.snapshots/{args[0]}.{args[1]}"


class FakeDirect:
    def final(self, root: str = "root") -> tuple[int, int]:
        self.read = root
        return 4096, 0


def _move(src: FakeSlave, direct: FakeDirect) -> _Move:
    """A move of ``web`` with only what the final pass touches: the slaves and the straight
    path (the pool, the store and the journal are not used there)."""
    report = MoveReport("web", "a", "b")
    unused: Any = None
    return _Move(unused, unused, "web", src, FakeSlave(), unused, report, None, direct=direct)


def test_a_stopped_lvm_guest_is_read_from_a_snapshot_dropped_afterwards() -> None:
    src, direct = FakeSlave(), FakeDirect()
    move = _move(src, direct)
    view, what = move.stopped_view("/vservers/web", "lvm")
    assert (view, what) == (f"/vservers/.snapshots/web.{SNAPSHOT_TAG}", f"snapshot:{SNAPSHOT_TAG}")
    assert move.final_pass(view, "/etc/vservers/web", what) == 4096
    assert direct.read == f"snapshot:{SNAPSHOT_TAG}" and move.verified
    move.drop_view()
    move.drop_view()  # once only
    assert src.calls == [
        ("snapshot_take", "web", SNAPSHOT_TAG),
        ("snapshot_drop", "web", SNAPSHOT_TAG),
    ]


def test_dir_and_btrfs_are_read_in_place_and_a_failed_drop_is_noted() -> None:
    src = FakeSlave(failing="snapshot_drop")
    move = _move(src, FakeDirect())
    for storage in ("dir", "btrfs"):
        assert move.stopped_view("/vservers/web", storage) == ("/vservers/web", "root")
    assert src.calls == []
    move.stopped_view("/vservers/web", "lvm")
    move.drop_view()
    assert move.report.notes == [
        f"snapshot {SNAPSHOT_TAG} of web stays: lvremove: Logical volume in use"
    ]
