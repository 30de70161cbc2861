"""The master's side of a copy straight from one slave to another (vstools.pool.push runs on the
slaves): it asks the source for a one-time key, has the destination let it in (from the
source's address, write-only, into the guest's receiving place, for a day at most), then has
the source push; when the copy is done, or fails, the key is removed on both sides. When the
source cannot reach the destination at all, the first push says so (NoDirectPath) and the
caller relays through the master instead."""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vstools.errors import HostError, VSError
from vstools.host.ssh import (
    RSYNC_VANISHED,
    SSH_FAILED,
    Remote,
    Unreachable,
    known_host_lines,
    resolve,
)
from vstools.pool.slaves import Pool


class NoDirectPath(HostError):
    """The source slave cannot reach the destination: relay through the master."""


def _address_of(host: str) -> str:
    """The IPv4 address the master finds for ``host`` (the slaves see the same network), or
    the name itself when it has none here."""
    try:
        return str(socket.getaddrinfo(host, 22, socket.AF_INET, socket.SOCK_STREAM)[0][4][0])
    except OSError:
        return host


@dataclass
class DirectPath:
    """A guest's root pushed from ``src`` to ``dst`` with a one-time key."""

    src: Remote
    dst: Remote
    name: str
    options: dict[str, Any]
    worked: bool = False  # a push went through: a later failure is a cut, not a missing path
    notes: list[str] = field(default_factory=list)

    @classmethod
    def open(cls, pool: Pool, src: Remote, dst: Remote, name: str) -> DirectPath:
        """Install the one-time key (the destination must be receiving ``name`` already)."""
        address, port = resolve(pool.options, dst.host)
        address = _address_of(address)
        known_hosts = pool.options.known_hosts or str(Path.home() / ".ssh" / "known_hosts")
        lines = known_host_lines(known_hosts, dst.host)
        key = src.call("push_key", name, address)
        dst.call("push_allow", name, key["public_key"], key["from"])
        limits = [s.bwlimit_kib for s in (pool.slave(src.host), pool.slave(dst.host))]
        options = {
            "target": address,
            "port": port,
            "alias": dst.host,
            "known_hosts": lines,
            "bwlimit": min((b for b in limits if b), default=None),
            "compress": pool.slave(src.host).compress or pool.slave(dst.host).compress,
        }
        return cls(src, dst, name, options)

    def push(self, what: str, *, live: bool = False, checksum: bool = False) -> int:
        """One pass of ``what`` (``root``, ``snapshot:TAG``, ``conf``, or a comma-separated
        list of them); the bytes it moved."""
        return int(self._pass(what, live=live, checksum=checksum)["bytes"])

    def final(self, root: str = "root") -> tuple[int, int]:
        """The pass made while the guest is stopped, root (``root`` or ``snapshot:TAG``) and
        configuration in one call, every file compared by content: the copy is verified as it
        is made. The bytes moved and the files found different though their size and time were
        the same (copied again)."""
        answer = self._pass(f"{root},conf", live=False, checksum=True)
        return int(answer["bytes"]), int(answer["repaired"])

    def send(self, tag: str, parent: str, *, final: bool) -> dict[str, Any]:
        """Snapshot the root at the source as ``tag`` and ``btrfs send`` it (incrementally
        from ``parent`` when named) into the destination's received snapshots; ``final``: the
        configuration follows (compared by content). The bytes moved, the received snapshot's
        name and the UUID it must carry there, the files found different."""
        options = json.dumps(self.options | {"final": final})
        answer: dict[str, Any] = self.src.call("push_send", self.name, tag, parent, options)
        if answer["code"] == SSH_FAILED:
            why = f"{self.src.host} cannot reach {self.dst.host}: {answer['reason']}"
            if not self.worked:
                raise NoDirectPath(why)
            raise Unreachable(why)
        if answer["code"] != 0:
            raise HostError(
                f"btrfs send from {self.src.host} to {self.dst.host} failed: {answer['reason']}"
            )
        self.worked = True
        return answer

    def _pass(self, what: str, *, live: bool, checksum: bool) -> dict[str, Any]:
        answer = self._call(what, checksum=checksum)
        if answer["code"] == 0 or (answer["code"] == RSYNC_VANISHED and live):
            return answer
        raise HostError(
            f"rsync from {self.src.host} to {self.dst.host} failed (exit {answer['code']}):"
            f" {answer['reason']}"
        )

    def _call(self, what: str, **flags: bool) -> dict[str, Any]:
        answer: dict[str, Any] = self.src.call(
            "push_copy", self.name, what, json.dumps(self.options | flags)
        )
        if answer["code"] == SSH_FAILED:
            why = f"{self.src.host} cannot reach {self.dst.host}: {answer['reason']}"
            if not self.worked:
                raise NoDirectPath(why)
            raise Unreachable(why)
        self.worked = True
        return answer

    def close(self) -> None:
        """Remove the key on both sides (what fails is noted: it expires anyway)."""
        for remote, function in ((self.dst, "push_revoke"), (self.src, "push_drop")):
            try:
                remote.call(function, self.name)
            except VSError as exc:
                self.notes.append(f"the one-time key of {self.name} stays on {remote.host}"
                                  f" until it expires: {exc}")  # fmt: skip
