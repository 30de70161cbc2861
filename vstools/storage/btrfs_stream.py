"""A guard on a ``btrfs send`` stream arriving from another host (vs-put, vs-move between btrfs
slaves), between the network and ``btrfs receive``.

``btrfs receive --chroot`` confines the paths a stream names, not the UUIDs: the parent of a
snapshot and the source of a clone are looked up by UUID in the whole file system (by
Received UUID, then, for a parent, by UUID). A hostile sender that knows another subvolume's
UUID (a snapshot another host is sending here at the same time, or one this host once sent it)
could have that subvolume's extents copied into the guest it sends: read across guests.

The guard reads the stream as ``btrfs receive`` frames it (the stream header, then commands of
a 10-byte header and their attributes) and lets each command through only once it has it whole. A
snapshot's parent and a clone's source must be the subvolume this stream makes or one already
received for the same guest (``allowed``); the stream makes one subvolume and ends there.
Anything else is refused before ``btrfs receive`` sees it (StreamRefused). The checksums are
``btrfs receive``'s to check."""

from __future__ import annotations

import struct
import uuid
from collections.abc import Callable, Iterator

from vstools.errors import StateError

MAGIC = b"btrfs-stream\0"
STREAM_HEADER = struct.Struct("<13sI")
COMMAND_HEADER = struct.Struct("<IHI")  # length (after this header), command, crc32c
ATTRIBUTE_HEADER = struct.Struct("<HH")  # type, length
VERSIONS = (1, 2)
# btrfs receive's own buffer holds 16 KiB + 128 KiB (a version 2 encoded write): a longer
# command is refused there too. Bounds what the guard holds.
MAX_COMMAND = 1 << 20
READ_SIZE = 1 << 20

# <linux/btrfs/send.h>
SUBVOL, SNAPSHOT, CLONE, END = 1, 2, 16, 21
ATTR_UUID, ATTR_DATA, ATTR_CLONE_UUID = 1, 19, 20
NAMES = {SUBVOL: "subvol", SNAPSHOT: "snapshot", CLONE: "clone"}


class StreamRefused(StateError):
    """A stream the guard does not let through to btrfs receive."""


def attributes(payload: bytes) -> dict[int, bytes]:
    """The attributes of a command that carries no data (subvol, snapshot, clone), by type,
    framed as btrfs receive frames them. Refused: a data attribute (from version 2 it has no
    length and runs to the end of the command: nothing after it would be seen alike), a
    repeated attribute (btrfs receive keeps the last) and one running past its command."""
    found: dict[int, bytes] = {}
    pos = 0
    while pos < len(payload):
        if len(payload) - pos < ATTRIBUTE_HEADER.size:
            raise StreamRefused("a btrfs stream attribute is cut short")
        kind, length = ATTRIBUTE_HEADER.unpack_from(payload, pos)
        if kind == ATTR_DATA:
            raise StreamRefused("data in a btrfs stream command that carries none")
        pos += ATTRIBUTE_HEADER.size
        if pos + length > len(payload):
            raise StreamRefused("a btrfs stream attribute runs past its command")
        if kind in found:
            raise StreamRefused(f"a btrfs stream command repeats its attribute {kind}")
        found[kind] = payload[pos : pos + length]
        pos += length
    return found


def _uuid(value: bytes | None, what: str) -> uuid.UUID:
    if value is None or len(value) != 16:
        raise StreamRefused(f"a btrfs stream {what} without a valid UUID")
    return uuid.UUID(bytes=value)


def guard(read: Callable[[int], bytes], allowed: set[uuid.UUID]) -> Iterator[bytes]:
    """The stream read with ``read(n)``, in blocks of whole commands, each checked before it
    is yielded. ``allowed``: the Received UUIDs of what was received for the same guest
    before, the only subvolumes a snapshot or a clone may name besides the one being made."""
    buffer = bytearray()
    while len(buffer) < STREAM_HEADER.size and (block := read(READ_SIZE)):
        buffer += block
    if len(buffer) < STREAM_HEADER.size:
        raise StreamRefused("not a btrfs stream: it ends before its header")
    magic, version = STREAM_HEADER.unpack_from(buffer, 0)
    if magic != MAGIC or version not in VERSIONS:
        raise StreamRefused(f"not a btrfs stream of version {' or '.join(map(str, VERSIONS))}")
    checked = _Checker(allowed)
    pos = STREAM_HEADER.size
    while True:
        pos = checked.commands(buffer, pos)
        if pos:
            yield bytes(buffer[:pos])
            del buffer[:pos]
            pos = 0
        block = read(READ_SIZE)
        if not block:
            break
        buffer += block
    if buffer:
        yield bytes(buffer)  # a command cut short: btrfs receive fails on it


class _Checker:
    """The commands of one stream, checked in order (``commands``)."""

    def __init__(self, allowed: set[uuid.UUID]) -> None:
        self.allowed = allowed
        self.made: uuid.UUID | None = None  # the subvolume this stream makes
        self.ended = False

    def commands(self, buffer: bytearray, pos: int) -> int:
        """Check every whole command of ``buffer`` from ``pos``; where the first one that is
        not whole yet starts."""
        while len(buffer) - pos >= COMMAND_HEADER.size:
            if self.ended:
                raise StreamRefused("a btrfs stream goes on past its end: one subvolume each")
            length, command, _ = COMMAND_HEADER.unpack_from(buffer, pos)
            if length > MAX_COMMAND:
                raise StreamRefused(
                    f"a btrfs stream command of {length} bytes (at most {MAX_COMMAND})"
                )
            end = pos + COMMAND_HEADER.size + length
            if end > len(buffer):
                break
            if command in (SUBVOL, SNAPSHOT, CLONE):
                payload = bytes(buffer[pos + COMMAND_HEADER.size : end])  # a few bytes
                self.check(command, attributes(payload))
            elif command == END:
                self.ended = True
            pos = end
        return pos

    def check(self, command: int, found: dict[int, bytes]) -> None:
        """StreamRefused unless a subvol, snapshot or clone command (its ``found`` attributes)
        names only this stream's subvolume or an allowed one."""
        if command == CLONE:
            source = _uuid(found.get(ATTR_CLONE_UUID), "clone")
            if source != self.made and source not in self.allowed:
                raise StreamRefused(
                    f"a btrfs clone from the subvolume {source}, which is neither this stream's"
                    " nor one received for this guest"
                )
            return
        if self.made is not None:
            raise StreamRefused("a btrfs stream that makes a second subvolume")
        self.made = _uuid(found.get(ATTR_UUID), NAMES[command])
        if command == SNAPSHOT:
            parent = _uuid(found.get(ATTR_CLONE_UUID), "snapshot's parent")
            if parent not in self.allowed:
                raise StreamRefused(
                    f"a btrfs snapshot of the subvolume {parent}, which was not received for"
                    " this guest"
                )
