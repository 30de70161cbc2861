"""The master's store of guests (vs-get, vs-put, backups restored): STATE_DIR/pool/store/NAME
holds a guest's configuration directory (``conf/``) and its root filesystem (``root/``). A copy
is made under a temporary name, ``.NAME.partial``, verified, then renamed into place: a copy
being made is never taken for a complete one, and the previous complete copy stays until the
new one has replaced it."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from vstools.names import check_guest_name

COMPLETE = ".complete"  # in a copy's directory once it was verified


@dataclass(frozen=True, slots=True)
class Store:
    """The store under ``top`` (STATE_DIR/pool/store), mode 0700: it holds guests' files."""

    top: Path

    def copy(self, name: str) -> Path:
        """Where the complete copy of ``name`` is."""
        return self.top / check_guest_name(name)

    def partial(self, name: str) -> Path:
        """Where a copy of ``name`` is made before it is verified."""
        return self.top / f".{check_guest_name(name)}.partial"

    def has(self, name: str) -> bool:
        """Whether a complete, verified copy of ``name`` is stored."""
        return (self.copy(name) / COMPLETE).is_file()

    def prepare(self, name: str) -> Path:
        """The partial copy's directory, with its conf/ and root/ (kept from a killed run: rsync
        then sends only the rest)."""
        self.top.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.top.chmod(0o700)
        partial = self.partial(name)
        for sub in ("conf", "root"):
            (partial / sub).mkdir(parents=True, exist_ok=True)
        (partial / "root").chmod(0o755)
        return partial

    def commit(self, name: str) -> Path:
        """The verified partial copy replaces the complete one (the old one removed after)."""
        partial, final = self.partial(name), self.copy(name)
        (partial / COMPLETE).write_text("verified\n")
        old = self.top / f".{name}.old"
        if old.exists():
            shutil.rmtree(old)
        if final.exists():
            final.rename(old)
        partial.rename(final)
        if old.exists():
            shutil.rmtree(old)
        return final

    def relay(self, name: str) -> Path:
        """Where a move relayed through the master keeps ``name``'s files between its source and
        its destination (``.NAME.relay``, with conf/ and root/; kept from a killed run)."""
        relay = self.top / f".{check_guest_name(name)}.relay"
        self.top.mkdir(mode=0o700, parents=True, exist_ok=True)
        for sub in ("conf", "root"):
            (relay / sub).mkdir(parents=True, exist_ok=True)
        (relay / "root").chmod(0o755)
        return relay

    def drop_relay(self, name: str) -> None:
        """Remove what a move relayed of ``name``."""
        relay = self.top / f".{check_guest_name(name)}.relay"
        if relay.exists():
            shutil.rmtree(relay)

    def drop(self, name: str) -> None:
        """Remove the stored copy of ``name`` and any partial one."""
        for path in (self.copy(name), self.partial(name)):
            if path.exists():
                shutil.rmtree(path)

    def names(self) -> list[str]:
        """The guests with a complete copy in the store."""
        if not self.top.is_dir():
            return []
        return sorted(p.name for p in self.top.iterdir() if (p / COMPLETE).is_file())


def store_of(state_dir: Path) -> Store:
    """The master's store under its STATE_DIR."""
    return Store(state_dir / "pool" / "store")
