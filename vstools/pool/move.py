"""vs-move (DESIGN §10): a guest taken from one slave to another with the shortest stop. While
it runs, passes copy it (from a snapshot on btrfs, live on dir), repeated while each one moves
less than the one before, with a bound; then it is held (it refuses to start at its source),
stopped, copied once more (only what changed), verified file by file, put in place at the
destination and started there. The source copy is kept as NAME.moved until the guest runs at
its destination, then removed.

Each step is in the master's journal before it is taken: killed at any step and run again, a
move converges to one complete copy running where it should; it never runs twice (the held
source refuses to start). A failure before the destination runs rolls back: what the
destination received is removed and the guest runs again at its source.

The root goes straight from the source slave to the destination, with a key made for this copy
only and removed after it (vstools.pool.direct); where the source cannot reach the destination,
through the master (its store's ``.NAME.relay``), and the summary says which. The
configuration directory, a few small files, always goes through the master."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vstools.config.pool import Slave
from vstools.errors import NotFoundError, RollbackError, StateError, UsageError, VSError
from vstools.host.ssh import Armed, NotArmed, Remote
from vstools.pool.direct import DirectPath, NoDirectPath
from vstools.pool.inventory import Inventory, JournalEntry
from vstools.pool.locate import locate
from vstools.pool.ops import SNAPSHOT_TAG, Journal, journalled, preflight, remote_dir
from vstools.pool.placement import Choice, Need, choose
from vstools.pool.slaves import Pool
from vstools.pool.store import Store
from vstools.pool.transfer import ProgressCallback, copy, verified

MAX_LIVE_PASSES = 4  # passes while the guest runs, at most (P.Haul bounds its iterations too)
SETTLED_BYTES = 8 << 20  # a live pass that moved no more than this is followed by the stop
HOW = "relayed through the master"
SENT = " with btrfs send/receive"
STRAIGHT = "straight from {src} to {dst}"

SNAPSHOTTING = ("btrfs", "lvm")  # a running guest is read from a snapshot on these
EARLY, STOPPED, COMMITTED = "early", "stopped", "committed"
_STAGE_OF = {
    "hold": STOPPED,
    "stop": STOPPED,
    "final pass": STOPPED,
    "verify": STOPPED,
    "commit": COMMITTED,
    "start": COMMITTED,
    "keep": COMMITTED,
    "drop": COMMITTED,
}


@dataclass
class MoveReport:
    """What a move did, for its summary."""

    name: str
    source: str
    target: str
    live_passes: list[int] = field(default_factory=list)  # bytes each pass moved
    final_bytes: int = 0
    seconds: float = 0.0
    stopped_s: float | None = None  # from down at its source to running at the destination
    shutdown_s: float | None = None  # how long its own shutdown took before that
    running: bool = False
    resumed: str | None = None
    placement: Choice | None = None
    how: str = ""  # the way the files went
    notes: list[str] = field(default_factory=list)


def stage_of(step: str | None) -> str:
    """Where a killed move stood: before the guest was held, held and stopped, or put in
    place at its destination."""
    return _STAGE_OF.get(step or "", EARLY)


@dataclass
class _Move:
    """One move under way: the slaves, the store, the journal."""

    pool: Pool
    store: Store
    name: str
    src: Remote
    dst: Remote
    journal: Journal
    report: MoveReport
    progress: ProgressCallback | None
    places: dict[str, str] = field(default_factory=dict)  # where the destination receives it
    direct: DirectPath | None = None  # the source pushes straight to the destination
    verified: bool = False  # the final pass compared every file by content
    sends: bool = False  # both ends on btrfs, straight: btrfs send/receive, not rsync
    taken: list[str] = field(default_factory=list)  # the source's snapshots of this run's sends
    sent: int = 0  # the sends of this run: the next snapshot's number
    received: tuple[str, str] | None = None  # the last snapshot sent: its name and UUID
    viewed: bool = False  # the final pass reads a snapshot of the stopped root (lvm)
    armed_start: Armed | None = None  # the destination's receive_start, started before the stop

    def arm(self) -> None:
        """Before the guest stops: start, on both slaves, the calls of the time it will be
        stopped (the source's final pass, its connection to the destination open; the
        destination's commit and start, the runtime imported), each waiting for its word, so
        that the window holds no program start and no SSH handshake on a slave. They act only
        on that word: the final pass once the guest is stopped, the start once that pass is
        verified; the master's failure or death makes them end without acting."""
        if self.direct is not None:
            self.direct.arm()
        if self.armed_start is None:
            self.armed_start = self.dst.arm("receive_start_armed", self.name)

    def disarm(self) -> None:
        """End the armed calls that have not acted, without their acting."""
        if self.direct is not None:
            self.direct.disarm()
        armed, self.armed_start = self.armed_start, None
        if armed is not None:
            armed.cancel()

    def start_at_destination(self) -> None:
        """Commit and start the guest at the destination (receive_start), through the armed
        call when it got ready, else with a call made now."""
        armed, self.armed_start = self.armed_start, None
        if armed is not None:
            try:
                armed.go(timeout_s=self.dst.options.call_timeout_s)
                return
            except NotArmed as exc:
                self.report.notes.append(f"the start was not prepared ahead: {exc}")
        self.dst.call("receive_start", self.name)

    def choose_send(self, storage: str) -> None:
        """btrfs send/receive when the root goes straight between two btrfs hosts; what a
        killed run received is removed first (the sends start anew, from a full one)."""
        both = storage == "btrfs" and self.places.get("storage") == "btrfs"
        self.sends = both and self.direct is not None
        if self.sends:
            self.dst.call("received_clear", self.name)
            self.report.how += SENT

    def send_pass(self, *, final: bool = False) -> int:
        """Snapshot the root and send it (incrementally from the snapshot sent before); the
        source then keeps only this snapshot, the next send's parent. ``final``: the guest is
        stopped, and the configuration follows. The bytes moved."""
        if self.direct is None:
            raise StateError("btrfs send needs the straight path")
        tag = f"{SNAPSHOT_TAG}{self.sent}"
        parent = self.taken[-1] if self.taken else ""
        self.taken.append(tag)
        self.sent += 1
        answer = self.direct.send(tag, parent, final=final)
        self.received = (str(answer["subvolume"]), str(answer["uuid"]))
        if parent and not final:
            self.taken.remove(parent)  # the source removed it
        if answer.get("repaired"):
            self.report.notes.append(f"{answer['repaired']} files found different and copied again")
        return int(answer["bytes"])

    def drop_sent(self) -> None:
        """Remove the source's snapshots of this run's sends (what fails is noted)."""
        while self.taken:
            tag = self.taken.pop()
            try:
                self.src.call("snapshot_drop", self.name, tag)
            except VSError as exc:
                self.report.notes.append(f"snapshot {tag} of {self.name} stays: {exc}")

    def sent_root(self, *, final: bool = False) -> int:
        """A pass of the root by btrfs send; the relay (rsync) when the source cannot reach
        the destination at all."""
        try:
            return self.send_pass(final=final)
        except NoDirectPath as exc:
            self.sends = False
            self.drop_sent()
            self.relay_instead(str(exc))
            raise

    def open_direct(self) -> None:
        """Try the straight path (a one-time key); the relay when it cannot even be set up."""
        try:
            self.direct = DirectPath.open(self.pool, self.src, self.dst, self.name)
        except VSError as exc:
            self.relay_instead(f"no straight path from {self.src.host} to {self.dst.host}: {exc}")

    def relay_instead(self, why: str) -> None:
        """From now on, files go through the master; the report says why."""
        if self.direct is not None:
            self.close_direct()
        self.report.how = f"{HOW} ({why})"

    def close_direct(self) -> None:
        """Remove the one-time key on both slaves."""
        if self.direct is not None:
            self.direct.close()
            self.report.notes += self.direct.notes
            self.direct = None

    def live_pass(self, root: str, storage: str) -> int:
        """One pass while the guest runs, from a snapshot where its storage has them."""
        if self.sends:
            with contextlib.suppress(NoDirectPath):
                return self.sent_root()
        snapshot = storage in SNAPSHOTTING
        source, what = root, "root"
        if snapshot:
            source = self.src.call("snapshot_take", self.name, SNAPSHOT_TAG)
            what = f"snapshot:{SNAPSHOT_TAG}"
        try:
            return self.root_pass(what, source, live=not snapshot)
        finally:
            if snapshot:
                self.src.call("snapshot_drop", self.name, SNAPSHOT_TAG)

    def root_pass(self, what: str, source: str, *, live: bool) -> int:
        """Copy the root (``what``, at ``source`` on the source slave) to the destination's
        place, straight or through the relay; the bytes that changed at the source."""
        if self.direct is not None:
            try:
                return self.direct.push(what, live=live)
            except NoDirectPath as exc:
                self.relay_instead(str(exc))
        relay = self.store.relay(self.name) / "root"
        first = copy(remote_dir(self.src, source), f"{relay}/", slave=self.slave(self.src),
                     ssh=self.pool.options, live=live, progress=self.progress)  # fmt: skip
        copy(f"{relay}/", remote_dir(self.dst, self.places["root"]), slave=self.slave(self.dst),
             ssh=self.pool.options)  # fmt: skip
        return first.bytes

    def conf_pass(self, conf_dir: str) -> None:
        """Copy the configuration directory, through the relay."""
        relay = self.store.relay(self.name) / "conf"
        copy(remote_dir(self.src, conf_dir), f"{relay}/", slave=self.slave(self.src),
             ssh=self.pool.options)  # fmt: skip
        copy(f"{relay}/", remote_dir(self.dst, self.places["conf"]), slave=self.slave(self.dst),
             ssh=self.pool.options)  # fmt: skip

    def stopped_view(self, root: str, storage: str) -> tuple[str, str]:
        """Where the final pass reads the stopped guest's root, and what a push names it: in
        place, or on lvm, whose volume is mounted only while the guest runs, a read-only
        snapshot of it (taken anew if a killed run left one), dropped after the verification."""
        if storage != "lvm":
            return root, "root"
        self.viewed = True
        return self.src.call("snapshot_take", self.name, SNAPSHOT_TAG), f"snapshot:{SNAPSHOT_TAG}"

    def drop_view(self) -> None:
        """Remove the snapshot stopped_view took (what fails is noted)."""
        if self.viewed:
            try:
                self.src.call("snapshot_drop", self.name, SNAPSHOT_TAG)
                self.viewed = False
            except VSError as exc:
                self.report.notes.append(f"snapshot {SNAPSHOT_TAG} of {self.name} stays: {exc}")

    def final_pass(self, root: str, conf_dir: str, what: str = "root") -> int:
        """The pass made while the guest is stopped, root and configuration; the bytes moved.
        Straight: one call, every file compared by content, so the copy is verified as it is
        made (what differed though its size and time did not is counted); relayed: each hop,
        then ``verify``. btrfs send: the root's stream, then the configuration (compared by
        content), then the destination checks that the snapshot arrived whole (its Received
        UUID) and makes it the guest's root."""
        if self.sends:
            with contextlib.suppress(NoDirectPath):
                moved = self.sent_root(final=True)
                if self.received is not None:
                    self.dst.call("received_take", self.name, *self.received)
                    self.verified = True
                    return moved
        if self.direct is not None:
            try:
                moved, repaired = self.direct.final(what)
            except NoDirectPath as exc:
                self.relay_instead(str(exc))
            else:
                if repaired:
                    self.report.notes.append(f"{repaired} files found different and copied again")
                self.verified = True
                return moved
        moved = self.root_pass(what, root, live=False)
        self.conf_pass(conf_dir)
        return moved

    def verify(self, root: str, conf_dir: str) -> None:
        """Every file checked on both sides of each hop of the relay (checksums); what differs
        is copied again. Nothing left to do after a straight final pass."""
        if self.verified:
            return
        relay = self.store.relay(self.name)
        for origin, local, there in ((root, relay / "root", self.places["root"]),
                                     (conf_dir, relay / "conf", self.places["conf"])):  # fmt: skip
            for source, target, slave in (
                (remote_dir(self.src, origin), f"{local}/", self.src),
                (f"{local}/", remote_dir(self.dst, there), self.dst),
            ):
                what = f"the copy of {origin}"
                repaired = verified(source, target, slave=self.slave(slave),
                                    ssh=self.pool.options, what=what)  # fmt: skip
                if repaired:
                    self.report.notes.append(f"{repaired} files found different and copied again")

    def slave(self, remote: Remote) -> Slave:
        """slaves.conf's entry of ``remote`` (its bwlimit and compress)."""
        return self.pool.slave(remote.host)


def move_guest(
    pool: Pool,
    inventory: Inventory,
    store: Store,
    name: str,
    *,
    source: str | None,
    target: str | None,
    one_step: bool = False,
    env: dict[str, str],
    progress: ProgressCallback | None = None,
    say: Callable[[str], None] = lambda _: None,
) -> MoveReport:
    """Move ``name`` from ``source`` (default: the slave holding it) to ``target`` (default:
    placement's choice among the others); ``one_step``: stop it first and copy once."""
    started = time.monotonic()
    unfinished = inventory.unfinished(name)
    if unfinished is not None and unfinished.op == "move":
        source, target = _recorded_hosts(unfinished, source, target)
    if source is None:
        source = locate(pool, name).only()
    src = pool.remote(source)
    stage = stage_of(unfinished.step if unfinished is not None else None)
    facts: dict[str, Any] = {}
    choice = None
    if stage != COMMITTED:
        facts = src.call("guest_facts", name)
        if target is None:
            choice = choose(pool, Need.of_facts(facts), _size_mb(facts), exclude={source})
            target = choice.host
            say(f"placement: {choice.reason}")
    if target is None or target == source:
        raise UsageError(f"guest {name} is on {source} already: name another --dst_host")
    dst = pool.remote(target)
    report = MoveReport(name, source, target, placement=choice)
    with journalled(inventory, "move", name, source=source, target=target, env=env) as (
        journal,
        resumed,
    ):
        report.resumed = resumed
        move = _Move(pool, store, name, src, dst, journal, report, progress)
        stopped_at = None
        if stage == COMMITTED:
            report.running = _recorded_running(unfinished)
        else:
            stopped_at = _transfer(move, facts, stage, one_step=one_step, unfinished=unfinished)
        try:
            _finish(move, stopped_at)
        finally:
            move.disarm()
            move.close_direct()  # after the start: not in the time the guest is stopped
        store.drop_relay(name)
    report.seconds = time.monotonic() - started
    return report


def _recorded_hosts(
    entry: JournalEntry, source: str | None, target: str | None
) -> tuple[str | None, str | None]:
    """The hosts of an unfinished move, which a re-run must not contradict."""
    for given, recorded in ((source, entry.source), (target, entry.target)):
        if given is not None and recorded is not None and given != recorded:
            raise StateError(
                f"a move of {entry.guest} from {entry.source} to {entry.target} did not finish"
                f" (step {entry.step}): run vs-move --name {entry.guest} again to finish it"
            )
    return entry.source, entry.target


def _recorded_running(entry: JournalEntry | None) -> bool:
    """Whether the guest ran when the killed move stopped it (recorded at its stop)."""
    if entry is None or not entry.detail:
        return False
    try:
        return bool(json.loads(entry.detail).get("running"))
    except (ValueError, AttributeError):
        return False


def _size_mb(facts: dict[str, Any]) -> int:
    return max(1, int(facts.get("disk_used_mb") or 0) + 1)


def _transfer(
    move: _Move,
    facts: dict[str, Any],
    stage: str,
    *,
    one_step: bool,
    unfinished: JournalEntry | None,
) -> float | None:
    """Everything up to a verified copy at the destination, the guest held and stopped at its
    source; rolled back on failure. When the guest was stopped (monotonic clock), if by this
    run."""
    name, src, dst, journal, report = move.name, move.src, move.dst, move.journal, move.report
    # Whether it ran when the move began: recorded then, since a re-run may find it stopped.
    running = bool(facts.get("running")) if stage == EARLY else _recorded_running(unfinished)
    report.running = running
    paths = src.call("paths")
    root = str(Path(paths["root_dir"]) / name)
    conf_dir = str(Path(paths["guests_conf_dir"]) / name)
    stopped_at = None
    try:
        if stage == EARLY:
            journal.at("preflight")
            preflight(dst, Need.of_facts(facts), _size_mb(facts))
        journal.at("prepare", json.dumps({"running": running}))
        move.places = dst.call("receive_begin", name, str(facts["disk_limit_mb"]))
        report.how = STRAIGHT.format(src=src.host, dst=dst.host)
        move.open_direct()
        move.choose_send(str(facts.get("storage")))
        if stage == EARLY and running and not one_step:
            previous = None
            for _ in range(MAX_LIVE_PASSES):
                journal.at("live pass")
                moved = move.live_pass(root, str(facts.get("storage")))
                report.live_passes.append(moved)
                if moved <= SETTLED_BYTES or (previous is not None and moved >= previous):
                    break
                previous = moved
        if stage == EARLY and running:
            move.arm()  # while it runs: the slaves' side of the stopped window, made ready
        journal.at("hold")
        src.call("move_hold", name, dst.host)
        journal.at("stop")
        if src.call("guest_facts", name).get("running"):
            asked = time.monotonic()
            src.run(["vs-control", "--name", name, "--stop"])
            stopped_at = time.monotonic()
            report.shutdown_s = stopped_at - asked
        journal.at("final pass")
        view, what = move.stopped_view(root, str(facts.get("storage")))
        report.final_bytes = move.final_pass(view, conf_dir, what)
        journal.at("verify")
        move.verify(view, conf_dir)
        move.drop_view()
    except VSError as exc:
        move.disarm()
        move.drop_view()
        move.drop_sent()
        move.close_direct()
        _roll_back(move, running, exc)
    return stopped_at


def _roll_back(move: _Move, running: bool, exc: VSError) -> None:
    """After a failure before the destination was committed: release the guest at its source
    and start it again if it ran; what the destination received is removed if it answers.
    Raises ``exc`` saying it was rolled back, or RollbackError."""
    name, src, dst = move.name, move.src, move.dst
    problems = []
    try:
        src.call("move_release", name)
        if running and not src.call("guest_facts", name).get("running"):
            src.run(["vs-control", "--name", name, "--start"])
    except VSError as again:
        problems.append(str(again))
    try:
        dst.call("receive_abort", name)
    except VSError:
        move.report.notes.append(
            f"{dst.host} keeps what it received of {name} (.{name}.receiving): the next copy"
            f" there resumes it; vs-fonctions receive_abort {name} there removes it"
        )
    if problems:
        raise RollbackError(
            f"{exc}; rolling back failed too: {'; '.join(problems)}: look at {src.host}"
        ) from exc
    state = "runs" if running else "stays"
    rolled = VSError(f"{exc}; rolled back: {name} {state} on {src.host}")
    rolled.exit_code = exc.exit_code
    raise rolled from exc


def _undo_commit(move: _Move, exc: VSError) -> None:
    """The guest did not start at its destination: remove it there, release it at its source
    and start it there again. Raises ``exc`` saying so, or RollbackError."""
    name, src, dst = move.name, move.src, move.dst
    try:
        dst.run(["vs-remove", "--name", name, "--force", "--yes"])
        move.journal.at("rolled back")
    except VSError as again:
        raise RollbackError(
            f"{exc}; removing {name} from {dst.host} failed too ({again}): it stays held on"
            f" {src.host}; look at both, then run vs-move again"
        ) from exc
    _roll_back(move, move.report.running, exc)


def _committed(remote: Remote, name: str) -> bool:
    """Whether ``name`` is a guest of ``remote`` (put in place there)."""
    try:
        remote.call("guest_facts", name)
    except NotFoundError:
        return False
    return True


def _finish(move: _Move, stopped_at: float | None) -> None:
    """Put the verified copy in place at the destination, start it there if it ran, then put
    the source copy aside and remove it. Each step is taken again safely."""
    name, src, dst, journal, report = move.name, move.src, move.dst, move.journal, move.report
    journal.at("commit")
    if report.running and stopped_at is not None:
        # Stopped by this run: committed and started in one call, for the clock is running.
        journal.at("start")
        try:
            move.start_at_destination()
        except VSError as exc:
            if not _committed(dst, name):
                raise
            _undo_commit(move, exc)
    else:
        move.disarm()
        dst.call("receive_commit", name)
        journal.at("start")
        if report.running and not dst.call("guest_facts", name).get("running"):
            try:
                dst.run(["vs-control", "--name", name, "--start"])
            except VSError as exc:
                _undo_commit(move, exc)
    if stopped_at is not None:
        report.stopped_s = time.monotonic() - stopped_at
    if move.sends or stopped_at is None:  # what btrfs receive left, once the guest runs
        dst.call("received_clear", name)
    journal.at("keep")
    src.call("move_keep", name)
    journal.at("drop")
    src.call("move_drop", name)
