"""The guard on a btrfs send stream arriving from another host (vstools.storage.btrfs_stream),
on streams made by hand: what it lets through unchanged, and each way a stream is refused
before btrfs receive sees the command. The real streams, and the attack on a real btrfs, are
in tests/guest/test_receive.py."""

from __future__ import annotations

import io
import struct
import uuid

import pytest

from vstools.storage.btrfs_stream import (
    ATTR_CLONE_UUID,
    ATTR_DATA,
    ATTR_UUID,
    CLONE,
    END,
    MAX_COMMAND,
    SNAPSHOT,
    SUBVOL,
    StreamRefused,
    guard,
)

WRITE, ATTR_PATH = 15, 15
MADE, PARENT, OTHER = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()


def _attr(kind: int, value: bytes) -> bytes:
    return struct.pack("<HH", kind, len(value)) + value


def _cmd(command: int, *attrs: bytes) -> bytes:
    payload = b"".join(attrs)
    return struct.pack("<IHI", len(payload), command, 0) + payload


def _stream(*commands: bytes, version: int = 1) -> bytes:
    return b"btrfs-stream\0" + struct.pack("<I", version) + b"".join(commands)


def _snapshot(parent: uuid.UUID) -> bytes:
    return _cmd(SNAPSHOT, _attr(ATTR_PATH, b"web.vspool1"), _attr(ATTR_UUID, MADE.bytes),
                _attr(ATTR_CLONE_UUID, parent.bytes))  # fmt: skip


def _clone(source: uuid.UUID, *extra: bytes) -> bytes:
    return _cmd(CLONE, _attr(ATTR_PATH, b"f"), _attr(ATTR_CLONE_UUID, source.bytes), *extra)


WRITE_1M = _cmd(WRITE, _attr(ATTR_PATH, b"f"), _attr(ATTR_DATA, b"x" * 60000))


def _through(stream: bytes, allowed: set[uuid.UUID] | None = None, size: int = 7) -> bytes:
    """What the guard passes of ``stream`` read in reads of at most ``size`` bytes (``allowed``:
    PARENT unless given)."""
    source = io.BytesIO(stream)
    return b"".join(
        guard(lambda n: source.read(min(n, size)), {PARENT} if allowed is None else allowed)
    )


def test_a_snapshot_of_a_received_parent_and_its_clones_pass_unchanged() -> None:
    stream = _stream(_snapshot(PARENT), WRITE_1M, _clone(PARENT), _clone(MADE), _cmd(END))
    assert _through(stream) == stream
    assert _through(stream, size=1 << 20) == stream
    full = _stream(_cmd(SUBVOL, _attr(ATTR_UUID, MADE.bytes)), *[WRITE_1M] * 20, _cmd(END))
    assert _through(full, set(), size=4096) == full


def test_a_cut_stream_passes_as_it_is_for_btrfs_receive_to_fail_on() -> None:
    stream = _stream(_snapshot(PARENT), WRITE_1M)
    assert _through(stream[:-100]) == stream[:-100]


@pytest.mark.parametrize(
    ("commands", "why"),
    [
        ((_snapshot(OTHER),), "snapshot of the subvolume .* not received for this guest"),
        ((_snapshot(PARENT), _clone(OTHER)), "clone from the subvolume .* neither"),
        ((_cmd(SUBVOL, _attr(ATTR_UUID, MADE.bytes)), _clone(PARENT), _clone(OTHER)), "clone"),
        ((_snapshot(PARENT), _clone(MADE, _attr(ATTR_CLONE_UUID, OTHER.bytes))), "repeats"),
        ((_snapshot(PARENT), _clone(MADE, _attr(ATTR_DATA, OTHER.bytes))), "carries none"),
        ((_cmd(CLONE, _attr(ATTR_CLONE_UUID, b"short")),), "without a valid UUID"),
        ((_cmd(SUBVOL, _attr(ATTR_UUID, MADE.bytes)), _snapshot(PARENT)), "second subvolume"),
        ((_snapshot(PARENT), _cmd(END), _cmd(SUBVOL)), "past its end"),
        ((_cmd(SNAPSHOT, struct.pack("<HH", ATTR_UUID, 16) + MADE.bytes[:8]),), "runs past"),
        ((struct.pack("<IHI", MAX_COMMAND + 1, WRITE, 0),), "at most"),
    ],
)
def test_refused_before_btrfs_receive_sees_the_command(
    commands: tuple[bytes, ...], why: str
) -> None:
    stream = _stream(*commands)
    passed: list[bytes] = []
    source = io.BytesIO(stream)
    with pytest.raises(StreamRefused, match=why):
        for block in guard(lambda n: source.read(min(n, 5)), {PARENT}):
            passed.append(block)
    # Nothing of the refused command went through: what passed is whole commands before it.
    assert stream.startswith(b"".join(passed))
    assert len(b"".join(passed)) <= len(stream) - len(commands[-1])


@pytest.mark.parametrize("head", [b"", b"btrfs-str", b"btrfs-stream\0\x03\0\0\0", b"x" * 17])
def test_what_is_not_a_stream_of_version_1_or_2_is_refused(head: bytes) -> None:
    with pytest.raises(StreamRefused, match="btrfs stream"):
        _through(head + _cmd(END))
    assert _through(_stream(_cmd(END), version=2)) == _stream(_cmd(END), version=2)
