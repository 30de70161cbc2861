"""A move between two btrfs slaves with ``btrfs send``/``receive`` instead of rsync: the source
sends a read-only snapshot of the guest's root (incrementally, with ``-p`` the snapshot sent
before), straight to the destination with the move's one-time key, whose forced command
becomes ``btrfs receive`` chrooted into the guest's ``.NAME.received`` (vstools.guest.receive).
The master then has the destination check the last snapshot's Received UUID against the
source's UUID (btrfs receive sets it only once the whole stream arrived) before it becomes the
guest's root. This function runs on the source (vs-fonctions push_send)."""

from __future__ import annotations

import re
import string
from typing import IO, Any

from vstools.errors import NotFoundError, UsageError
from vstools.guest.receive import BTRFS_RECEIVE
from vstools.host.hostconfig import HostConfig
from vstools.host.run import run_pipeline
from vstools.host.ssh import SSH_FAILED, build_ssh_argv, wait_for_go
from vstools.pool.push import copy_ssh, push_connection, push_copy
from vstools.storage.base import check_tag
from vstools.storage.btrfs import is_subvolume, subvolume_uuids
from vstools.storage.select import guest_storage


def push_send(
    host: HostConfig,
    name: str,
    tag: str,
    parent: str,
    options: dict[str, Any],
    *,
    mux: str | None = None,
) -> dict[str, Any]:
    """Snapshot ``name``'s root as ``tag`` (read-only) and send it to the destination named in
    ``options`` (as push_copy's), incrementally from snapshot ``parent`` when one is named (the
    destination received it before). ``options["final"]``: the guest is stopped; the
    configuration directory follows (rsync, compared by content) and the parent is kept for
    the cleanup after the guest runs. Otherwise the parent, no longer needed, is removed.
    Returns the exit status (255: this host cannot reach the destination; else the failing
    command's), the bytes of the stream, the received snapshot's name and the UUID it must
    carry there, the files of the configuration found different, and the reason of a failure.
    A full send (no ``parent``) starts a move's sends anew: the snapshots of the same series
    (``tag`` without its digits) that a killed move left here are removed first. ``mux``: as
    push_copy's."""
    storage = guest_storage(host, host.guest_conf(name))
    if not parent:
        series = re.compile(re.escape(tag.rstrip(string.digits)) + r"\d+")
        for stale in storage.snapshot_tags(name):
            if series.fullmatch(stale):
                storage.remove_snapshot(storage.snapshot_steps(name, stale)[1])
    previous = storage.snapshot_path(name, parent) if parent else None
    if previous is not None and not (previous.is_dir() and is_subvolume(previous)):
        raise NotFoundError(f"no btrfs snapshot {previous} here to send from")
    target, ssh = copy_ssh(host, name, options, mux=mux)
    storage.remove_snapshot(storage.snapshot_steps(name, tag)[1])  # a killed run's, if any
    snapshot = storage.create_snapshot(name, tag).path
    send = ["btrfs", "send", "-q", *(["-p", str(previous)] if previous else []), str(snapshot)]
    sender, receiver, sent = run_pipeline(send, build_ssh_argv(ssh, target, [BTRFS_RECEIVE]))
    answer: dict[str, Any] = {"code": 0, "bytes": sent, "subvolume": snapshot.name,
                              "uuid": subvolume_uuids(snapshot)[0], "repaired": 0,
                              "reason": ""}  # fmt: skip
    if receiver.returncode == SSH_FAILED:
        return answer | {"code": SSH_FAILED, "reason": receiver.stderr.strip()[-500:]}
    if receiver.returncode or sender.returncode:
        failed = receiver if receiver.returncode else sender
        why = (failed.stderr.strip() or f"{failed.argv[0]} exited {failed.returncode}")[-500:]
        return answer | {"code": failed.returncode or 1, "reason": why}
    if options.get("final"):
        conf = push_copy(host, name, "conf", options | {"checksum": True}, mux=mux)
        answer.update(code=conf["code"], reason=conf["reason"], repaired=conf["repaired"])
        answer["bytes"] += conf["bytes"]
    elif previous is not None:
        storage.remove_snapshot(storage.snapshot_steps(name, parent)[1])
    return answer


def push_final(
    host: HostConfig, name: str, options: dict[str, Any], *, stdin: IO[str], stdout: IO[str]
) -> dict[str, Any]:
    """On the source, armed before the guest stops (vstools.host.ssh.Remote.arm): this program
    started and its connection to the destination open (push_connection), it waits for the
    master's word, then makes the final pass through that connection: ``copy WHAT``, push_copy
    of WHAT with every file compared by content (the copy verified as it is made), or ``send
    TAG [PARENT]``, push_send's final send. Its answer; ``{"cancelled": true}``, having done
    nothing, on any other line or the end of stdin (the master gave up, or died)."""
    with push_connection(host, name, options) as mux:
        words = wait_for_go(stdin, stdout)
        if words is None:
            return {"cancelled": True}
        if len(words) == 2 and words[0] == "copy":
            return push_copy(host, name, words[1], options | {"checksum": True}, mux=mux)
        if len(words) in (2, 3) and words[0] == "send":
            parent = check_tag(words[2]) if len(words) == 3 else ""
            final = options | {"final": True}
            return push_send(host, name, check_tag(words[1]), parent, final, mux=mux)
        raise UsageError(f"push_final: go {' '.join(words)}? (copy WHAT, or send TAG [PARENT])")
