"""The master's inventory (DESIGN §10): a SQLite database in STATE_DIR/pool/inventory.db with
the hosts of the pool, their guests as last seen, the guests held in the master's store, and the
journal of pool operations. The slaves stay the truth for runtime state: the inventory is a
cache (refreshed by vs-scan) plus the journal (which makes get, put, move and remove resumable).

WAL mode, a busy timeout, and every change in one ``BEGIN IMMEDIATE`` transaction: one writer
at a time, readers never blocked. sqlite3 is imported when the database is first opened."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vstools.errors import HostError

SCHEMA = """
CREATE TABLE IF NOT EXISTS hosts (
    name TEXT PRIMARY KEY,
    reachable INTEGER NOT NULL,
    error TEXT,
    last_seen REAL,
    last_tried REAL NOT NULL,
    facts TEXT
);
CREATE TABLE IF NOT EXISTS guests (
    host TEXT NOT NULL,
    name TEXT NOT NULL,
    enabled INTEGER,
    running INTEGER,
    ip TEXT,
    vlan INTEGER,
    network TEXT,
    domain TEXT,
    context INTEGER,
    storage TEXT,
    userns INTEGER,
    disk_used_mb REAL,
    problem TEXT,
    last_seen REAL NOT NULL,
    PRIMARY KEY (host, name)
);
CREATE TABLE IF NOT EXISTS journal (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    op TEXT NOT NULL,
    guest TEXT NOT NULL,
    source TEXT,
    target TEXT,
    step TEXT NOT NULL,
    state TEXT NOT NULL,
    started REAL NOT NULL,
    updated REAL NOT NULL,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS journal_open ON journal (guest, state);
"""
GUEST_FIELDS = ("enabled", "running", "ip", "vlan", "network", "domain", "context", "storage",
                "userns", "disk_used_mb", "problem")  # fmt: skip
# Built from the constant above, never from input: every value is a bound parameter.
INSERT_GUEST = (
    f"INSERT INTO guests (host, name, {', '.join(GUEST_FIELDS)}, last_seen)"  # noqa: S608
    f" VALUES (?, ?, {', '.join('?' * len(GUEST_FIELDS))}, ?)"
)


@dataclass(frozen=True, slots=True)
class GuestRow:
    """One guest of the pool as the inventory last saw it."""

    host: str
    name: str
    enabled: bool
    running: bool
    ip: str | None
    vlan: int | None
    network: str | None
    domain: str | None
    context: int | None
    storage: str | None
    userns: bool
    disk_used_mb: float | None
    problem: str | None
    last_seen: float


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One pool operation: what, on which guest, from where to where, its step and state."""

    id: int
    op: str
    guest: str
    source: str | None
    target: str | None
    step: str
    state: str  # running (unfinished: to resume), done, failed
    started: float
    updated: float
    detail: str | None


class Inventory:
    """The database, opened on first use; ``clock`` is a parameter (tests fake time)."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.clock = clock
        self._db: Any = None

    def _conn(self) -> Any:
        if self._db is None:
            import sqlite3

            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            try:
                db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA busy_timeout=30000")
                db.execute("PRAGMA foreign_keys=ON")
                db.executescript(SCHEMA)
            except sqlite3.Error as exc:
                raise HostError(f"inventory {self.path}: {exc}") from None
            db.row_factory = sqlite3.Row
            self._db = db
        return self._db

    def close(self) -> None:
        """Close the database (reopened on next use)."""
        if self._db is not None:
            self._db.close()
            self._db = None

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """One write transaction (BEGIN IMMEDIATE: the only writer until it ends)."""
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    # -- hosts and guests ------------------------------------------------------------------------

    def record_host(
        self, host: str, guests: Sequence[dict[str, Any]], facts: dict[str, Any]
    ) -> None:
        """A slave answered: its facts, and its guests replace those recorded for it."""
        now = self.clock()
        with self.transaction() as db:
            db.execute(
                "INSERT INTO hosts (name, reachable, error, last_seen, last_tried, facts)"
                " VALUES (?, 1, NULL, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET reachable=1,"
                " error=NULL, last_seen=excluded.last_seen, last_tried=excluded.last_tried,"
                " facts=excluded.facts",
                (host, now, now, json.dumps(facts)),
            )
            db.execute("DELETE FROM guests WHERE host = ?", (host,))
            for guest in guests:
                values = [guest.get(field) for field in GUEST_FIELDS]
                db.execute(INSERT_GUEST, (host, guest["name"], *values, now))

    def record_unreachable(self, host: str, error: str) -> None:
        """A slave did not answer: said so; what was seen of its guests is kept (stale)."""
        now = self.clock()
        with self.transaction() as db:
            db.execute(
                "INSERT INTO hosts (name, reachable, error, last_seen, last_tried, facts)"
                " VALUES (?, 0, ?, NULL, ?, NULL) ON CONFLICT(name) DO UPDATE SET reachable=0,"
                " error=excluded.error, last_tried=excluded.last_tried",
                (host, error, now),
            )

    def guests(self, *, host: str | None = None, name: str | None = None) -> list[GuestRow]:
        """The guests recorded, by host then name (only ``host``'s, only ``name``)."""
        query, args = "SELECT * FROM guests WHERE 1=1", []
        if host is not None:
            query += " AND host = ?"
            args.append(host)
        if name is not None:
            query += " AND name = ?"
            args.append(name)
        rows = self._conn().execute(query + " ORDER BY host, name", args).fetchall()
        return [_guest_row(row) for row in rows]

    def host_facts(self, host: str) -> dict[str, Any] | None:
        """What the slave last said of itself, or None if it never answered."""
        row = self._conn().execute("SELECT facts FROM hosts WHERE name = ?", (host,)).fetchone()
        return None if row is None or row["facts"] is None else json.loads(row["facts"])

    # -- the journal -----------------------------------------------------------------------------

    def begin(self, op: str, guest: str, source: str | None, target: str | None) -> int:
        """Record a new operation, running at its first step; its id."""
        now = self.clock()
        with self.transaction() as db:
            cursor = db.execute(
                "INSERT INTO journal (op, guest, source, target, step, state, started, updated)"
                " VALUES (?, ?, ?, ?, 'begin', 'running', ?, ?)",
                (op, guest, source, target, now, now),
            )
            return int(cursor.lastrowid)

    def step(self, entry: int, step: str, detail: str | None = None) -> None:
        """The operation reached ``step`` (recorded before the step is taken)."""
        with self.transaction() as db:
            db.execute(
                "UPDATE journal SET step = ?, detail = COALESCE(?, detail), updated = ?"
                " WHERE id = ?",
                (step, detail, self.clock(), entry),
            )

    def finish(self, entry: int, state: str, detail: str | None = None) -> None:
        """The operation ended: ``done`` or ``failed`` (with why)."""
        with self.transaction() as db:
            db.execute(
                "UPDATE journal SET state = ?, detail = COALESCE(?, detail), updated = ?"
                " WHERE id = ?",
                (state, detail, self.clock(), entry),
            )

    def unfinished(self, guest: str) -> JournalEntry | None:
        """The operation on ``guest`` still running (its process was killed), if any."""
        row = (
            self._conn()
            .execute(
                "SELECT * FROM journal WHERE guest = ? AND state = 'running' ORDER BY id DESC",
                (guest,),
            )
            .fetchone()
        )
        return None if row is None else JournalEntry(**dict(row))

    def history(self, guest: str | None = None, limit: int = 50) -> list[JournalEntry]:
        """The newest operations (on ``guest``), newest first."""
        query, args = "SELECT * FROM journal", []
        if guest is not None:
            query += " WHERE guest = ?"
            args.append(guest)
        rows = self._conn().execute(query + " ORDER BY id DESC LIMIT ?", [*args, limit]).fetchall()
        return [JournalEntry(**dict(row)) for row in rows]


def _guest_row(row: Any) -> GuestRow:
    data = dict(row)
    data["enabled"] = bool(data["enabled"])
    data["running"] = bool(data["running"])
    data["userns"] = bool(data["userns"])
    return GuestRow(**data)


def inventory_path(state_dir: Path) -> Path:
    """Where the master keeps its inventory."""
    return state_dir / "pool" / "inventory.db"
