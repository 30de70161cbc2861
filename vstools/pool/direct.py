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
    Armed,
    NotArmed,
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
    armed: Armed | None = None  # the final pass's call, started before the stop (arm)

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

    def arm(self) -> None:
        """Before the guest stops: start the final pass's call at the source (push_final), its
        program started and its connection to the destination open, waiting for ``final`` or
        ``send``; so that the time the guest is stopped holds neither."""
        if self.armed is None:
            self.armed = self.src.arm("push_final", self.name, json.dumps(self.options))

    def disarm(self) -> None:
        """End the armed call without its acting (nothing if there is none)."""
        armed, self.armed = self.armed, None
        if armed is not None:
            armed.cancel()

    def final(self, root: str = "root") -> tuple[int, int]:
        """The pass made while the guest is stopped, root (``root`` or ``snapshot:TAG``) and
        configuration in one call, every file compared by content: the copy is verified as it
        is made. The bytes moved and the files found different though their size and time were
        the same (copied again). Through the armed call when there is one."""
        what = f"{root},conf"
        answer = self._armed("copy", what)
        if answer is None:
            answer = self._call(what, checksum=True)
        answer = self._checked(answer, live=False)
        return int(answer["bytes"]), int(answer["repaired"])

    def _armed(self, *words: str) -> dict[str, Any] | None:
        """The armed call's answer to ``go WORDS`` (checked for the path, as _call's), or None
        when there is no armed call or it never got ready (it did nothing: call afresh)."""
        armed, self.armed = self.armed, None
        if armed is None:
            return None
        try:
            answer: dict[str, Any] = armed.go(*words)
        except NotArmed as exc:
            self.notes.append(f"the final pass was not prepared ahead: {exc}")
            return None
        return self._reached(answer)

    def send(self, tag: str, parent: str, *, final: bool) -> dict[str, Any]:
        """Snapshot the root at the source as ``tag`` and ``btrfs send`` it (incrementally
        from ``parent`` when named) into the destination's received snapshots; ``final``: the
        configuration follows (compared by content). The bytes moved, the received snapshot's
        name and the UUID it must carry there, the files found different."""
        answer = self._armed("send", tag, *([parent] if parent else [])) if final else None
        if answer is None:
            options = json.dumps(self.options | {"final": final})
            answer = self._reached(
                self.src.call("push_send", self.name, tag, parent, options, timeout_s=None)
            )
        if answer["code"] != 0:
            raise HostError(
                f"btrfs send from {self.src.host} to {self.dst.host} failed: {answer['reason']}"
            )
        self.worked = True
        return answer

    def _pass(self, what: str, *, live: bool, checksum: bool) -> dict[str, Any]:
        return self._checked(self._call(what, checksum=checksum), live=live)

    def _checked(self, answer: dict[str, Any], *, live: bool) -> dict[str, Any]:
        """A push's answer, or HostError when its rsync failed (files vanishing while a running
        guest was read excepted)."""
        if answer["code"] == 0 or (answer["code"] == RSYNC_VANISHED and live):
            return answer
        raise HostError(
            f"rsync from {self.src.host} to {self.dst.host} failed (exit {answer['code']}):"
            f" {answer['reason']}"
        )

    def _call(self, what: str, **flags: bool) -> dict[str, Any]:
        return self._reached(
            self.src.call("push_copy", self.name, what, json.dumps(self.options | flags),
                          timeout_s=None)  # a copy: as long as it takes, ssh watching the link
        )  # fmt: skip

    def _reached(self, answer: dict[str, Any]) -> dict[str, Any]:
        """``answer``, unless the source could not reach the destination: NoDirectPath when no
        push ever went through (relay instead), else Unreachable (a cut)."""
        if answer["code"] == SSH_FAILED:
            why = f"{self.src.host} cannot reach {self.dst.host}: {answer['reason']}"
            if not self.worked:
                raise NoDirectPath(why)
            raise Unreachable(why)
        self.worked = True
        return answer

    def close(self) -> None:
        """End an armed call, then remove the key on both sides (what fails is noted: it
        expires anyway)."""
        self.disarm()
        for remote, function in ((self.dst, "push_revoke"), (self.src, "push_drop")):
            try:
                remote.call(function, self.name)
            except VSError as exc:
                self.notes.append(f"the one-time key of {self.name} stays on {remote.host}"
                                  f" until it expires: {exc}")  # fmt: skip
