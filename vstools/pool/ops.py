"""vs-get and vs-put as resumable operations (DESIGN §10). Each is recorded in the master's
journal before each step is taken, and every step can be taken again: a copy resumes where it
stopped (rsync keeps partial files), a snapshot left by a killed run is taken anew, a copy is
made under a temporary name and only renamed into place once it was verified, and what the
slave received is committed only after the master verified it. Killed at any step and run
again, an operation converges; a guest is never lost and never put twice."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from vstools.config.guest import GuestConf
from vstools.config.lexer import read_config
from vstools.errors import NotFoundError, StateError, VSError
from vstools.host.journal import log
from vstools.host.ssh import Remote
from vstools.pool.inventory import Inventory
from vstools.pool.locate import locate
from vstools.pool.placement import Choice, Need, choose, room_on, unfit
from vstools.pool.slaves import Pool
from vstools.pool.store import Store
from vstools.pool.transfer import ProgressCallback, copy, verified
from vstools.storage.base import disk_usage_bytes

MB = 1 << 20
SNAPSHOT_TAG = "vspool"  # the snapshot a copy reads a running guest from


@dataclass
class Report:
    """What an operation did, for its summary line."""

    name: str
    host: str
    bytes: int = 0
    seconds: float = 0.0
    frozen_s: float | None = None  # a running dir guest frozen for the final pass
    snapshot: bool = False  # read from a snapshot of the running guest
    resumed: str | None = None  # the step a killed run had reached
    placement: Choice | None = None
    notes: list[str] = field(default_factory=list)


class Journal:
    """One operation's entry in the master's journal; ``at`` records a step before it is
    taken. VS_FAILPOINT=OP:STEP (tests only) kills the process right after recording that step,
    as a power cut there would."""

    def __init__(self, inventory: Inventory, entry: int, op: str, env: dict[str, str]) -> None:
        self.inventory = inventory
        self.entry = entry
        self.op = op
        self.failpoint = env.get("VS_FAILPOINT", "")

    def at(self, step: str, detail: str | None = None) -> None:
        """The operation reaches ``step``."""
        self.inventory.step(self.entry, step, detail)
        log.info("step: %s: %s", self.op, step)
        if self.failpoint == f"{self.op}:{step}":
            os.kill(os.getpid(), signal.SIGKILL)


@contextmanager
def journalled(
    inventory: Inventory,
    op: str,
    name: str,
    *,
    source: str | None,
    target: str | None,
    env: dict[str, str],
) -> Iterator[tuple[Journal, str | None]]:
    """Begin (or take over, after a killed run) the operation ``op`` on ``name``; the journal
    and the step the killed run had reached. Done or failed (with why) when the block ends."""
    unfinished = inventory.unfinished(name)
    if unfinished is not None and unfinished.op != op:
        raise StateError(
            f"guest {name}: a {unfinished.op} begun at {time.ctime(unfinished.started)} did not"
            f" finish (step {unfinished.step}): run vs-{unfinished.op} --name {name} again first"
        )
    resumed = unfinished.step if unfinished is not None else None
    entry = unfinished.id if unfinished is not None else inventory.begin(op, name, source, target)
    journal = Journal(inventory, entry, op, env)
    try:
        yield journal, resumed
    except BaseException as exc:
        if isinstance(exc, VSError):
            inventory.finish(entry, "failed", str(exc))
        raise
    inventory.finish(entry, "done")


def remote_dir(remote: Remote, path: str) -> str:
    """rsync's ``host:path/`` for a directory on a slave (its content, not the directory)."""
    return f"{remote.host}:{path.rstrip('/')}/"


# -- vs-get ------------------------------------------------------------------------------------


def get_guest(
    pool: Pool,
    inventory: Inventory,
    store: Store,
    name: str,
    *,
    host: str | None,
    env: dict[str, str],
    progress: ProgressCallback | None = None,
) -> Report:
    """Copy ``name`` (root and configuration) from the slave holding it into the master's
    store. A running guest is read from a read-only snapshot (btrfs, lvm) or, on ``dir``,
    copied live then frozen for a final pass compared by content; a guest on lvm is read from
    a snapshot also when stopped."""
    unfinished = inventory.unfinished(name)
    if host is None and unfinished is not None and unfinished.op == "get" and unfinished.source:
        host = unfinished.source  # resume where the killed run read from
    if host is None:
        host = locate(pool, name).only()
    remote = pool.remote(host)
    slave = pool.slave(host)
    report = Report(name, host)
    with journalled(inventory, "get", name, source=host, target=None, env=env) as (
        journal,
        resumed,
    ):
        report.resumed = resumed
        journal.at("ask the slave")
        facts = remote.call("guest_facts", name)
        paths = remote.call("paths")
        root = str(Path(paths["root_dir"]) / name)
        conf_dir = str(Path(paths["guests_conf_dir"]) / name)
        frozen_at: float | None = None
        snapshot = False
        try:
            if resumed in ("freeze", "final pass", "verify", "commit"):
                thaw(remote, name)  # a killed run left it frozen
            source = root
            # A running guest on btrfs is read from a snapshot; one on lvm always is: its
            # volume is mounted only while it runs (a stopped one's mount point is empty).
            storage = facts.get("storage")
            if storage == "lvm" or (facts.get("running") and storage == "btrfs"):
                journal.at("snapshot")
                source = remote.call("snapshot_take", name, SNAPSHOT_TAG)
                snapshot = report.snapshot = True
            live = bool(facts.get("running")) and not snapshot
            # A copy made from nothing is verified as it is made: rsync checks each file it
            # sends by a whole-file checksum. What a killed run left was not sent now: then
            # every file is compared with its source.
            fresh = not store.partial(name).exists()
            partial = store.prepare(name)
            journal.at("copy root")
            first = copy(remote_dir(remote, source), f"{partial / 'root'}/", slave=slave,
                         ssh=pool.options, live=live, progress=progress)  # fmt: skip
            journal.at("copy configuration")
            copy(remote_dir(remote, conf_dir), f"{partial / 'conf'}/", slave=slave,
                 ssh=pool.options)  # fmt: skip
            report.bytes, report.seconds = first.bytes, first.seconds
            if live:
                journal.at("freeze")
                remote.run(["vs-control", "--name", name, "--freeze"])
                frozen_at = time.monotonic()
                # Frozen, every file compared by content: what the live pass read while it
                # changed is copied again, and the root is verified by the same pass.
                journal.at("final pass")
                final = copy(remote_dir(remote, source), f"{partial / 'root'}/", slave=slave,
                             ssh=pool.options, progress=progress, checksum=True)  # fmt: skip
                report.bytes += final.bytes
            journal.at("verify")
            checks = [] if fresh else [(conf_dir, partial / "conf")]
            if not fresh and not live:
                checks.insert(0, (source, partial / "root"))
            for origin, local in checks:
                repaired = verified(remote_dir(remote, origin), f"{local}/", slave=slave,
                                    ssh=pool.options, what=f"the copy of {origin}")  # fmt: skip
                if repaired:
                    report.notes.append(f"{repaired} files found different and copied again")
        finally:
            if frozen_at is not None:
                thaw(remote, name)
                report.frozen_s = time.monotonic() - frozen_at
            if snapshot:
                remote.call("snapshot_drop", name, SNAPSHOT_TAG)
        journal.at("commit")
        store.commit(name)
    return report


def thaw(remote: Remote, name: str) -> None:
    """Thaw ``name`` on the slave (nothing if it is not frozen)."""
    remote.run(["vs-control", "--name", name, "--thaw"], check=False)


# -- vs-put ------------------------------------------------------------------------------------


def stored_conf(store: Store, name: str) -> GuestConf:
    """The guest.conf of the stored copy of ``name`` (NotFoundError without one)."""
    if not store.has(name):
        raise NotFoundError(f"the master's store has no complete copy of guest {name} (vs-get)")
    path, text = read_config(store.copy(name) / "conf" / GuestConf.FILE_NAME)
    return GuestConf.parse(path, text)


def put_guest(
    pool: Pool,
    inventory: Inventory,
    store: Store,
    name: str,
    *,
    host: str | None,
    env: dict[str, str],
    progress: ProgressCallback | None = None,
    say: Callable[[str], None] = lambda _: None,
) -> Report:
    """Copy the stored ``name`` to a slave (``host``, or the one placement chooses), verify
    it there, and only then put it in place. Refused before anything is sent when the slave
    already has the guest, its address or its context, lacks its network, room, xattrs or
    ACLs."""
    conf = stored_conf(store, name)
    size_mb = size_mb_of(store.copy(name) / "root")
    unfinished = inventory.unfinished(name)
    if host is None and unfinished is not None and unfinished.op == "put" and unfinished.target:
        host = unfinished.target
    choice = None
    if host is None:
        choice = choose(pool, Need.of_conf(conf), size_mb)
        host = choice.host
        say(f"placement: {choice.reason}")
    remote = pool.remote(host)
    slave = pool.slave(host)
    report = Report(name, host, placement=choice)
    with journalled(inventory, "put", name, source=None, target=host, env=env) as (
        journal,
        resumed,
    ):
        report.resumed = resumed
        if resumed == "commit":  # killed while committing: finish that (it is idempotent)
            remote.call("receive_commit", name)
            return report
        journal.at("preflight")
        preflight(remote, Need.of_conf(conf), size_mb)
        journal.at("prepare")
        places = remote.call("receive_begin", name, str(conf.disk_limit_mb))
        journal.at("copy root")
        first = copy(f"{store.copy(name) / 'root'}/", remote_dir(remote, places["root"]),
                     slave=slave, ssh=pool.options, progress=progress)  # fmt: skip
        journal.at("copy configuration")
        copy(f"{store.copy(name) / 'conf'}/", remote_dir(remote, places["conf"]), slave=slave,
             ssh=pool.options)  # fmt: skip
        report.bytes, report.seconds = first.bytes, first.seconds
        journal.at("verify")
        # Received into places made now, every file was sent and checked by rsync as it went;
        # places a killed copy left are compared file by file with the store.
        checks = [] if places.get("fresh") else [("root", places["root"]), ("conf", places["conf"])]
        for local, there in checks:
            repaired = verified(f"{store.copy(name) / local}/", remote_dir(remote, there),
                                slave=slave, ssh=pool.options,
                                what=f"what {host} received of {name}")  # fmt: skip
            if repaired:
                report.notes.append(f"{repaired} files found different and copied again")
        journal.at("commit")
        remote.call("receive_commit", name)
    return report


def preflight(remote: Remote, conf: Need, size_mb: int) -> None:
    """Read-only checks on the destination before anything is sent: the name, address and
    context free there, the guest's network present, room, xattrs and ACLs."""
    report = remote.call("scan_report")
    why = unfit(report, conf, size_mb, memory=False)
    if why is not None:
        raise StateError(f"{remote.host} {why}")
    room = remote.call("check_room", str(room_on(report["host"], conf, size_mb)))
    if room["problems"]:
        raise StateError(f"{remote.host}: {'; '.join(room['problems'])}")


def size_mb_of(root: Path) -> int:
    """The size of a stored copy's root, in MB (at least 1)."""
    return max(1, disk_usage_bytes(root) // MB)
