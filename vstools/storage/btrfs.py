"""The ``btrfs`` storage backend: each root a subvolume with a qgroup limit, clones as
writable snapshots, read-only snapshots for backups and moves."""

from __future__ import annotations

from collections import Counter
from functools import partial
from pathlib import Path

from vstools.config.values import StorageKind
from vstools.errors import HostError, StateError
from vstools.host.run import run
from vstools.plan import Step, apply_steps
from vstools.storage.base import (
    MB,
    SNAPSHOT_DIR,
    Snapshot,
    Storage,
    cmd_output,
    filesystem_type,
    run_cmd,
    secure_root_dir,
)


class BtrfsStorage(Storage):
    """Each root is a subvolume at ROOT_DIR/NAME, its disk limit the subvolume's qgroup limit
    on referenced bytes (the filesystem must have quotas enabled); a clone of a btrfs guest is
    a writable snapshot (instant, sharing every extent until either side writes)."""

    kind = StorageKind.BTRFS

    def check_create(self, name: str, size_mb: int) -> None:
        """Read-only: ROOT_DIR must be on btrfs with quotas enabled; HostError with the reason."""
        check_btrfs(self.paths.root_dir)

    def make_steps(self, name: str, size_mb: int) -> list[Step]:
        """Steps that make the root as a subvolume and set its qgroup limit to ``size_mb``."""
        root = self.root(name)
        return [
            Step(
                f"create the btrfs subvolume {root}",
                partial(self._create_subvolume, root),
                partial(delete_subvolume, root),
            ),
            self._limit_step(root, size_mb),
        ]

    def clone_steps(self, name: str, size_mb: int, source: Storage, source_name: str) -> list[Step]:
        """A btrfs source is cloned as a writable snapshot, limited to ``size_mb``; another kind
        of source is copied."""
        if source.kind is not StorageKind.BTRFS:
            return super().clone_steps(name, size_mb, source, source_name)
        root, origin = self.root(name), source.root(source_name)
        return [
            Step(
                f"snapshot the btrfs subvolume {origin} as {root}",
                partial(run_cmd, ["btrfs", "subvolume", "snapshot", str(origin), str(root)]),
                partial(delete_subvolume, root),
            ),
            self._limit_step(root, size_mb),
        ]

    def open_received(self, name: str, place: Path, size_mb: int) -> bool:
        """The received root is a subvolume limited to ``size_mb`` (kept when it exists)."""
        if place.exists() or place.is_symlink():
            return False
        check_btrfs(self.paths.root_dir)
        apply_steps([
            Step(f"create {place}", partial(self._create_subvolume, place),
                 partial(delete_subvolume, place)),
            self._limit_step(place, size_mb),
        ])  # fmt: skip
        return True

    def _delete_tree(self, path: Path) -> None:
        """A subvolume is deleted as one; anything else as the dir backend deletes it."""
        if path.is_dir() and not path.is_symlink() and is_subvolume(path):
            delete_subvolume(path)
        else:
            super()._delete_tree(path)

    def _create_subvolume(self, root: Path) -> None:
        secure_root_dir(root.parent)
        run_cmd(["btrfs", "subvolume", "create", str(root)])
        root.chmod(0o755)

    def _limit_step(self, root: Path, size_mb: int) -> Step:
        # No undo of its own: the subvolume's deletion takes its qgroup with it.
        return Step(
            f"limit {root} to {size_mb} MB (btrfs qgroup)",
            partial(run_cmd, ["btrfs", "qgroup", "limit", f"{size_mb}M", str(root)]),
        )

    def limit_steps(self, name: str, old_mb: int, new_mb: int) -> list[Step]:
        """Steps that change the qgroup limit, undone by setting it back; StateError when shrinking
        below what the guest uses now."""
        root = self.root(name)
        used = self.used_bytes(name)
        if new_mb < old_mb and used > new_mb * MB:
            raise StateError(
                f"guest {name} uses {used / MB:.0f} MB of its disk now, more than {new_mb} MB:"
                " free space in it first"
            )
        return [
            Step(
                f"set {name} disk limit to {new_mb} MB (btrfs qgroup of {root})",
                partial(run_cmd, ["btrfs", "qgroup", "limit", f"{new_mb}M", str(root)]),
                partial(run_cmd, ["btrfs", "qgroup", "limit", f"{old_mb}M", str(root)]),
            )
        ]

    def used_bytes(self, name: str) -> int:
        """The subvolume's qgroup referenced bytes, as of the last transaction commit (at most
        the commit interval, 30 s by default, old)."""
        root = self.root(name)
        if not root.is_dir():
            return 0
        return qgroup_referenced(root)

    def snapshot_steps(self, name: str, tag: str) -> tuple[list[Step], Snapshot]:
        """Steps that take a read-only snapshot subvolume at ``snapshot_path``, and the snapshot."""
        root, target = self.root(name), self.snapshot_path(name, tag)
        snapshot = Snapshot(name, tag, target)
        return [
            Step(
                f"take a read-only btrfs snapshot of {root} at {target}",
                partial(_snapshot_ro, root, target),
                partial(delete_subvolume, target),
            )
        ], snapshot

    def remove_snapshot_steps(self, snapshot: Snapshot) -> list[Step]:
        """Steps that delete the snapshot's subvolume."""
        return [
            Step(
                f"delete the btrfs snapshot {snapshot.path}",
                partial(delete_subvolume, snapshot.path),
            )
        ]

    def snapshot_tags(self, name: str) -> list[str]:
        """The snapshots of the guest: the subvolumes ROOT_DIR/.snapshots/NAME.TAG."""
        top = self.paths.root_dir / SNAPSHOT_DIR
        if not top.is_dir():
            return []
        found = [p for p in top.glob(f"{name}.*") if p.is_dir() and not p.is_symlink()]
        return sorted(p.name.split(".", 1)[1] for p in found if is_subvolume(p))

    def revert_steps(self, name: str, tag: str) -> list[Step]:
        """Steps that replace the guest's subvolume by a writable snapshot of snapshot ``tag``
        (made beside it first, so a failure leaves the root as it was), its qgroup limit copied;
        the snapshot itself stays."""
        root, source = self.root(name), self.snapshot_path(name, tag)
        if not (source.is_dir() and is_subvolume(source)):
            raise StateError(f"guest {name} has no snapshot {tag}")
        new, old = root.with_name(f".{name}.revert-new"), root.with_name(f".{name}.revert-old")
        limit_mb = qgroup_limit_mb(root)
        steps = [
            Step(
                f"make {new} a writable snapshot of {source}",
                partial(run_cmd, ["btrfs", "subvolume", "snapshot", str(source), str(new)]),
                partial(delete_subvolume, new),
            ),
        ]
        if limit_mb is not None:
            steps.append(self._limit_step(new, limit_mb))
        steps += [
            Step(
                f"put {root} aside as {old}",
                partial(_rename, root, old),
                partial(_rename, old, root),
            ),
            Step(
                f"put {new} in place of {root}",
                partial(_rename, new, root),
                partial(_rename, root, new),
            ),
            Step(f"delete the previous root {old}", partial(delete_subvolume, old)),
        ]
        return steps


def _rename(source: Path, target: Path) -> None:
    source.rename(target)


def qgroup_limit_mb(path: Path) -> int | None:
    """The max referenced limit of the subvolume's qgroup, in MB (None when unlimited)."""
    out = cmd_output(["btrfs", "qgroup", "show", "--raw", "-re", "-f", str(path)])
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[0].startswith("0/") and fields[3].isdigit():
            return max(1, int(fields[3]) // MB)
    return None


def _snapshot_ro(root: Path, target: Path) -> None:
    target.parent.mkdir(mode=0o700, exist_ok=True)
    run_cmd(["btrfs", "subvolume", "snapshot", "-r", str(root), str(target)])


def is_subvolume(path: Path) -> bool:
    """A btrfs subvolume's root directory has inode number 256."""
    return path.stat().st_ino == 256 and filesystem_type(path) == "btrfs"


def delete_subvolume(path: Path) -> None:
    """Delete the subvolume at ``path`` (nothing when it is gone already)."""
    # The kernel drops the subvolume's qgroup itself once its cleaner has freed the extents.
    if path.exists():
        run_cmd(["btrfs", "subvolume", "delete", "--commit-after", str(path)])


def subvolume_uuids(path: Path) -> tuple[str, str]:
    """The subvolume's UUID and its Received UUID ("-" unless it came whole from btrfs
    receive, which sets it last)."""
    found = {}
    for line in cmd_output(["btrfs", "subvolume", "show", str(path)]).splitlines():
        key, _, value = line.strip().partition(":")
        if key in ("UUID", "Received UUID"):
            found[key] = value.strip()
    return found.get("UUID", "-"), found.get("Received UUID", "-")


def uuid_counts(path: Path) -> Counter[str]:
    """How many subvolumes of the file system holding ``path`` carry each UUID, as their own
    or as their Received UUID (btrfs receive looks a stream's UUIDs up among both)."""
    counts: Counter[str] = Counter()
    listing = cmd_output(["btrfs", "subvolume", "list", "-u", "-R", str(path)])
    for line in listing.splitlines():
        fields = line.split()  # ... received_uuid R uuid U path P: the keys come before the path
        for key in ("received_uuid", "uuid"):
            if key in fields and (value := fields[fields.index(key) + 1]) != "-":
                counts[value] += 1
    return counts


def check_btrfs(root_dir: Path) -> None:
    """ROOT_DIR (or, before it exists, its nearest existing parent) is on btrfs with quotas
    enabled: without them the disk limit could not be enforced."""
    where = root_dir
    while not where.exists() and where != where.parent:
        where = where.parent
    fstype = filesystem_type(where)
    if fstype != "btrfs":
        raise HostError(
            f"STORAGE=btrfs needs ROOT_DIR {root_dir} on a btrfs file system; it is on {fstype}"
        )

    shown = run(["btrfs", "qgroup", "show", str(where)], check=False)
    if shown.returncode != 0:
        reason = (shown.stderr.strip().splitlines() or ["btrfs qgroup show failed"])[-1]
        raise HostError(
            f"STORAGE=btrfs needs quotas on the file system of {root_dir} for the disk limits"
            f" ({reason}): btrfs quota enable {where}"
        )


def qgroup_referenced(path: Path) -> int:
    """Referenced bytes of the qgroup of the subvolume at ``path`` (0/<subvolume id>)."""
    out = cmd_output(["btrfs", "qgroup", "show", "--raw", "-f", str(path)])
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[0].startswith("0/") and fields[1].isdigit():
            return int(fields[1])
    raise HostError(f"no qgroup for {path} in: {out.strip()}")
