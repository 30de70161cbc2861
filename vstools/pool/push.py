"""Copies straight from one slave to another (a move), without trust between them and without
the master's agent: the source makes a key pair for this copy only; the destination lets that
key in for this copy only: from the source's address, until a day has passed, with no terminal
or forwarding, and only as an rsync that writes into the guest's receiving place (``push_receive``
checks what is asked, rrsync-like, devices allowed); the key is
removed on both sides when the copy is done (the master's vs-move does it, also on failure,
and the next move of the guest removes one a killed run left). These functions run on the
slaves (vs-fonctions); the master only passes public keys, an address and a host key."""

from __future__ import annotations

import contextlib
import datetime
import functools
import os
import re
import shlex
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vstools.config.guest import GuestConf
from vstools.config.values import parse_host
from vstools.errors import NotFoundError, UsageError
from vstools.guest.receive import BTRFS_RECEIVE, btrfs_receive, receiving
from vstools.host.authkeys import restricted_line, set_marked
from vstools.host.fsutil import atomic_write
from vstools.host.hostconfig import HostConfig
from vstools.host.jail import check_data_dir, enter_jail
from vstools.host.rsync_server import check_server_command, exec_server, jail_scratch
from vstools.host.run import run, spawn, stop
from vstools.host.ssh import (
    RSYNC_VANISHED,
    SshOptions,
    build_rsync_argv,
    build_ssh_master_argv,
    keygen_argv,
    parse_progress,
    run_argv,
)
from vstools.names import check_guest_name
from vstools.storage.select import guest_storage

KEY_LIFETIME = datetime.timedelta(days=1)  # expiry-time: a key a killed run left dies anyway
# Where a push writes, as the source names it: the root's receiving place or the configuration's.
_PLACES = {".": 0, "./": 0, "conf": 1, "conf/": 1}
_TARGETS = {"root": "./", "conf": "conf/"}
# --itemize-changes: a file sent (<) or received (>) though its size and time were the same.
_CONTENT_ONLY = re.compile(r"^[<>]fc\.\.")


def _comment(name: str) -> str:
    return f"vs-tools-push:{check_guest_name(name)}"


def _authorized_keys(host: HostConfig) -> Path:
    return Path(host.settings.ssh_authorized_keys)


def _locks(host: HostConfig) -> Path:
    return host.paths.run_dir / "locks"


def _key_dir(host: HostConfig, name: str) -> Path:
    return host.paths.run_dir / "pool" / "push" / check_guest_name(name)


def push_key(host: HostConfig, name: str, target: str) -> dict[str, str]:
    """On the source: a new key pair for copying ``name`` to ``target`` (an address), and the
    address this host reaches it from (for the destination's ``from=``)."""
    directory = _key_dir(host, name)
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(mode=0o700, parents=True)
    run(keygen_argv(str(directory / "key"), _comment(name)))
    return {
        "public_key": (directory / "key.pub").read_text().strip(),
        "from": _address_towards(target),
    }


def _address_towards(target: str) -> str:
    """This host's address on the way to ``target`` (no packet is sent)."""
    try:
        where = socket.getaddrinfo(target, 22, socket.AF_INET, socket.SOCK_DGRAM)[0][4]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(where)
            return str(probe.getsockname()[0])
    except OSError as exc:
        raise NotFoundError(f"no way from here to {target}: {exc}") from None


def push_drop(host: HostConfig, name: str) -> str:
    """On the source: remove the copy's key pair."""
    directory = _key_dir(host, name)
    if directory.exists():
        shutil.rmtree(directory)
    return str(directory)


def push_allow(host: HostConfig, name: str, public_key: str, source: str) -> dict[str, str]:
    """On the destination: let ``public_key`` in from ``source``, for a day, only to write into
    ``name``'s receiving place (receive_begin made it)."""
    root = receiving(host, name)[0]
    if not root.is_dir():
        raise NotFoundError(f"nothing of guest {name} is being received here (receive_begin)")
    expires = (datetime.datetime.now(datetime.UTC) + KEY_LIFETIME).strftime("%Y%m%d%H%M")
    command = f"{_vs_fonctions()} push_receive {name}"
    line = restricted_line(public_key, whose="the source's copy key", command=command,
                           mark=_comment(name), source=source, expires=expires)  # fmt: skip
    set_marked(_authorized_keys(host), _comment(name), line, lock_dir=_locks(host))
    return {"root": str(root)}


def push_receive(host: HostConfig, name: str, command: str | None = None) -> None:
    """On the destination, as the copy key's forced command: ``btrfs-receive`` becomes
    ``btrfs receive`` of a snapshot stream (vstools.guest.receive.btrfs_receive). Otherwise
    check that the source asks for an rsync that writes (never ``--sender``: nothing can be
    read back) with the options a push uses, into one of ``name``'s receiving places, then
    become that rsync, jailed with that place as its only writable directory
    (vstools.host.rsync_server). Not rrsync: in a subdirectory it refuses device nodes, which
    a guest's root has."""
    asked = shlex.split(
        command if command is not None else os.environ.get("SSH_ORIGINAL_COMMAND", "")
    )
    if asked == [BTRFS_RECEIVE]:
        sys.stdout.flush()
        btrfs_receive(host, name)
    target = check_server_command(asked, sender=False)
    if target not in _PLACES:
        raise UsageError(f"refused: a push into {target!r} (only ./ and conf/)")
    place = receiving(host, name)[_PLACES[target]]
    if not place.is_dir():
        raise NotFoundError(f"nothing of guest {name} is being received here")
    exec_server(asked, place, scratch=jail_scratch(host))


def _vs_fonctions() -> str:
    """This very vs-fonctions, by its absolute path (a forced command has sshd's PATH)."""
    running = Path(sys.argv[0])
    if running.name == "vs-fonctions" and running.is_absolute():
        return str(running)
    found = shutil.which("vs-fonctions")
    if found is None:
        raise NotFoundError("vs-fonctions is not on the PATH")
    return str(Path(found).absolute())


def push_revoke(host: HostConfig, name: str) -> str:
    """On the destination: remove the copy key of ``name`` (nothing if there is none)."""
    set_marked(_authorized_keys(host), _comment(name), None, lock_dir=_locks(host))
    return name


def push_copy(
    host: HostConfig, name: str, what: str, options: dict[str, Any], *, mux: str | None = None
) -> dict[str, Any]:
    """On the source: rsync ``name``'s root and/or configuration (``what``: a comma-separated
    list of ``root``, ``snapshot:TAG`` (the root, read from a snapshot), ``conf``) to its
    receiving places at the destination, with the copy key, in one call. ``options``:
    ``target`` (its address), ``port``, ``alias`` (the name its host key is checked by) and
    ``known_hosts`` (that key's lines), ``bwlimit`` (KiB/s), ``compress``, ``checksum``
    (compare every file's content: the copy is then verified, and the files found different
    though their size and time were the same are counted as ``repaired``), ``dry_run`` (list
    what differs, change nothing). Returns rsync's exit status (the first that failed), the
    bytes moved, the differences listed and the reason of a failure: the master decides (255:
    this host cannot reach the destination). ``mux``: the socket of a connection to the
    destination opened before (push_connection), which each rsync's ssh reuses."""
    target, ssh = copy_ssh(host, name, options, mux=mux)
    directory = _key_dir(host, name)
    dry, checksum = bool(options.get("dry_run")), bool(options.get("checksum"))
    extra = ["--checksum", "--itemize-changes"] if dry or checksum else []
    if dry:
        extra.append("--dry-run")
    answer: dict[str, Any] = {"code": 0, "vanished": False, "bytes": 0, "differences": [],
                              "repaired": 0, "reason": ""}  # fmt: skip
    for part in what.split(","):
        source, place = _source(host, name, part)
        # The sender reads a guest that may run: jailed with its files as its only view of
        # this host (and what its ssh needs), so a symlink swapped in mid-walk leads nowhere.
        jail = functools.partial(
            enter_jail, check_data_dir(source), writable=False, scratch=jail_scratch(host),
            keep=_ssh_needs(directory),
        )  # fmt: skip
        argv = build_rsync_argv("./", f"{target}:{place}", ssh=ssh,
                                bwlimit_kib=options.get("bwlimit"),
                                compress=bool(options.get("compress")),
                                partial=not dry, progress=not dry,
                                extra=extra)  # fmt: skip
        done = run_argv(argv, timeout_s=None, preexec=jail)
        lines = [line for line in re.split(r"[\r\n]", done.stdout) if line.strip()]
        figures = parse_progress(done.stdout) if not dry else None
        answer["bytes"] += figures.bytes if figures else 0
        answer["vanished"] = answer["vanished"] or done.code == RSYNC_VANISHED
        if dry:
            answer["differences"] += lines
        elif checksum:
            answer["repaired"] += sum(1 for line in lines if _CONTENT_ONLY.match(line))
        if done.code not in (0, RSYNC_VANISHED):
            answer.update(code=done.code, reason=done.reason())
            break
        if done.code:
            answer["code"] = done.code
    return answer


def copy_ssh(
    host: HostConfig, name: str, options: dict[str, Any], *, mux: str | None = None
) -> tuple[str, SshOptions]:
    """On the source: the destination's address and how to reach it with the copy key (its
    host key checked by its alias, from the lines the master passed), through the connection
    at ``mux`` when there is one."""
    target, known_hosts = check_host(str(options["target"])), str(options["known_hosts"])
    directory = _key_dir(host, name)
    if not (directory / "key").is_file():
        raise NotFoundError(f"no copy key for guest {name} here (push_key)")
    atomic_write(directory / "known_hosts", known_hosts, mode=0o600, durable=False)
    ssh = SshOptions(key=str(directory / "key"), known_hosts=str(directory / "known_hosts"),
                     connect_timeout_s=host.settings.ssh_timeout_s,
                     alive_interval_s=max(1, host.settings.ssh_timeout_s // 3),
                     port=int(options.get("port", 22)),
                     host_key_alias=check_host(str(options["alias"])),
                     mux_socket=mux)  # fmt: skip
    return target, ssh


@contextlib.contextmanager
def push_connection(host: HostConfig, name: str, options: dict[str, Any]) -> Iterator[str | None]:
    """On the source: one SSH connection to the destination with the copy key, held open for
    the block (an ssh in the foreground, stopped by its PID at the end, and by the kernel if
    this process dies first); the socket through which the pushes' ssh reuse it (in the key's
    directory, which a jailed rsync keeps), or None when it could not be opened (each ssh then
    connects on its own, as without it). A move opens it before the guest stops: the final
    pass then makes no SSH handshake while the guest is down."""
    target, ssh = copy_ssh(host, name, options)
    socket_path = _key_dir(host, name) / f"mux-{os.getpid()}"
    socket_path.unlink(missing_ok=True)
    master = spawn(build_ssh_master_argv(ssh, target, str(socket_path)), die_with_parent=True)
    try:
        deadline = time.monotonic() + ssh.connect_timeout_s + 1
        while not socket_path.exists() and master.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        yield str(socket_path) if socket_path.exists() and master.poll() is None else None
    finally:
        stop(master)
        socket_path.unlink(missing_ok=True)


def _ssh_needs(key_dir: Path) -> tuple[str, ...]:
    """What a jailed ssh client needs of this host: its copy key and known_hosts, and the
    name-service files that tell it who root is (no secret: /etc/shadow and host keys stay
    out)."""
    files = ("/etc/passwd", "/etc/group", "/etc/nsswitch.conf", "/etc/hosts")
    return (str(key_dir), *(f for f in files if os.path.isfile(f)))


def check_host(text: str) -> str:
    """A host name or address, refused if it could be read as an option or a path."""
    return parse_host(text)


def _source(host: HostConfig, name: str, what: str) -> tuple[str, str]:
    """The directory a push reads (the guest's root, one of its snapshots, or its configuration
    directory) and where it goes at the destination (``push_receive``'s places)."""
    if what in _TARGETS:
        paths = host.paths
        where = paths.guest_root if what == "root" else paths.guest_dir
        return str(where(check_guest_name(name))), _TARGETS[what]
    kind, _, tag = what.partition(":")
    if kind != "snapshot" or not tag:
        raise UsageError(f"what to copy is root, conf or snapshot:TAG, not {what!r}")
    conf: GuestConf = host.guest_conf(name)
    return str(guest_storage(host, conf).snapshot_path(name, tag)), _TARGETS["root"]
