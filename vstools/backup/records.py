"""What the master records of backups, in its inventory database (a table of its own beside
vstools.pool.inventory's): each archive it knows (so an archive that vanishes or changes
behind its back, by a slave's append-only key, is noticed before any prune or compaction makes
that permanent), and per guest its last successful backup, last failure, last verification and
the last overdue alert mailed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vstools.pool.inventory import Inventory

SCHEMA = """
CREATE TABLE IF NOT EXISTS backup_archives (
    name TEXT PRIMARY KEY,
    guest TEXT NOT NULL,
    host TEXT,
    id TEXT,
    created REAL NOT NULL,
    pruned REAL
);
CREATE TABLE IF NOT EXISTS backup_state (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS backup_guests (
    guest TEXT PRIMARY KEY,
    host TEXT,
    last_success REAL,
    last_archive TEXT,
    last_failure REAL,
    last_error TEXT,
    last_check REAL,
    last_check_ok INTEGER,
    overdue_mailed REAL
);
"""


@dataclass(frozen=True, slots=True)
class GuestBackups:
    """One guest's backup record."""

    guest: str
    host: str | None
    last_success: float | None
    last_archive: str | None
    last_failure: float | None
    last_error: str | None
    last_check: float | None
    last_check_ok: bool | None
    overdue_mailed: float | None


class Records:
    """The backup tables of the master's inventory."""

    def __init__(self, inventory: Inventory) -> None:
        self.inventory = inventory
        with inventory.transaction() as db:
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)

    def _upsert(self, guest: str, **values: Any) -> None:
        columns = list(values)
        # Column names come from the keyword names of this module's callers, never from input.
        sets = ", ".join(f"{c} = excluded.{c}" for c in columns)
        query = (
            f"INSERT INTO backup_guests (guest, {', '.join(columns)})"  # noqa: S608
            f" VALUES (?, {', '.join('?' * len(columns))})"
            f" ON CONFLICT(guest) DO UPDATE SET {sets}"
        )
        with self.inventory.transaction() as db:
            db.execute(query, (guest, *values.values()))

    def succeeded(self, guest: str, host: str, archive: str, archive_id: str | None) -> None:
        """A complete archive of ``guest`` exists: recorded, and its overdue alert reset."""
        now = self.inventory.clock()
        with self.inventory.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO backup_archives (name, guest, host, id, created, pruned)"
                " VALUES (?, ?, ?, ?, ?, NULL)",
                (archive, guest, host, archive_id, now),
            )
        self._upsert(guest, host=host, last_success=now, last_archive=archive,
                     overdue_mailed=None)  # fmt: skip

    def failed(self, guest: str, host: str | None, error: str) -> None:
        """A backup of ``guest`` failed, with why."""
        self._upsert(guest, host=host, last_failure=self.inventory.clock(), last_error=error)

    def checked(self, guest: str, ok: bool) -> None:
        """The repository was verified (``ok`` or not) with ``guest``'s archives in it."""
        self._upsert(guest, last_check=self.inventory.clock(), last_check_ok=int(ok))

    def overdue_mailed(self, guest: str) -> None:
        """The overdue alert of ``guest`` was mailed (once until its next success)."""
        self._upsert(guest, overdue_mailed=self.inventory.clock())

    def pruned(self, names: list[str]) -> None:
        """The master itself removed these archives."""
        now = self.inventory.clock()
        with self.inventory.transaction() as db:
            for name in names:
                db.execute("UPDATE backup_archives SET pruned = ? WHERE name = ?", (now, name))

    def good(self, transaction: int) -> None:
        """The repository was as the master made it at ``transaction`` (now)."""
        with self.inventory.transaction() as db:
            for key, value in (
                ("good_transaction", transaction),
                ("good_time", self.inventory.clock()),
            ):
                db.execute(
                    "INSERT INTO backup_state (key, value) VALUES (?, ?)"
                    " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    (key, str(value)),
                )

    def last_good(self) -> tuple[int, float] | None:
        """The last transaction at which the repository was as the master made it, and when."""
        rows = dict(
            self.inventory._conn().execute("SELECT key, value FROM backup_state").fetchall()
        )
        if "good_transaction" not in rows:
            return None
        return int(rows["good_transaction"]), float(rows["good_time"])

    def rolled_back(self, since: float) -> list[str]:
        """Archives recorded after ``since`` are gone with a rollback: no longer expected."""
        now = self.inventory.clock()
        with self.inventory.transaction() as db:
            names = [row[0] for row in db.execute(
                "SELECT name FROM backup_archives WHERE pruned IS NULL AND created > ?", (since,)
            ).fetchall()]  # fmt: skip
            db.execute("UPDATE backup_archives SET pruned = ? WHERE pruned IS NULL AND created > ?",
                       (now, since))  # fmt: skip
        return names

    def known(self) -> dict[str, str | None]:
        """Every archive the master recorded and did not remove: name to borg id."""
        rows = self.inventory._conn().execute(
            "SELECT name, id FROM backup_archives WHERE pruned IS NULL"
        )
        return {row["name"]: row["id"] for row in rows.fetchall()}

    def guest(self, guest: str) -> GuestBackups:
        """``guest``'s record (empty when it was never backed up)."""
        row = (
            self.inventory._conn()
            .execute("SELECT * FROM backup_guests WHERE guest = ?", (guest,))
            .fetchone()
        )
        if row is None:
            return GuestBackups(guest, None, None, None, None, None, None, None, None)
        data = dict(row)
        data["last_check_ok"] = (
            None if data["last_check_ok"] is None else bool(data["last_check_ok"])
        )
        return GuestBackups(**data)
