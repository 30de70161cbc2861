"""The pure parts of backups: archive names, the slaves' authorized_keys lines, retention
options and borg prune's answer, borg's JSON and log messages, the master's history check and
overdue rule, the secrets a slave reads, and the LVM snapshot paths (device-mapper is missing
here: their run is for the VM lab)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from vstools.backup.borg import (
    Listed,
    archive_name,
    build_authorized_line,
    check_archive,
    guest_of,
    log_messages,
    parse_created,
    parse_list,
)
from vstools.backup.master import accept_history, check_history, overdue
from vstools.backup.records import Records
from vstools.backup.retention import KeepPolicy, pruned_archives
from vstools.backup.slave import Secrets
from vstools.config.pool import parse_backup
from vstools.config.settings import Settings
from vstools.errors import HostError, StateError, UsageError
from vstools.host.authkeys import replace_marked
from vstools.paths import resolve_paths
from vstools.pool.inventory import Inventory
from vstools.storage import lvm
from vstools.storage.lvm import LvmOptions, LvmStorage, build_merge_argv, parse_snapshot_tags

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHq0 vs-backup@vsh-01"


def test_archive_names_sort_by_time_and_select_one_guest() -> None:
    name = archive_name("web", 1796090400.0)
    assert name == "web.20261201T020000Z"
    assert check_archive(name) == name and guest_of(name) == "web"
    assert archive_name("web", 1796090401.0) > name
    for bad in (
        "web",
        "web.2026-12-01T02:00:00",
        "../x.20261201T020000Z",
        "web.20261201T020000Z;id",
    ):
        with pytest.raises(UsageError):
            check_archive(bad)


def test_a_slave_key_is_restricted_to_an_append_only_serve_of_the_repository() -> None:
    line = build_authorized_line("/usr/bin/borg", Path("/var/lib/vs-tools/backup"), KEY, "vsh-01")
    assert line == (
        'restrict,command="/usr/bin/borg serve --restrict-to-repository /var/lib/vs-tools/backup'
        ' --append-only" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHq0 vs-backup:vsh-01\n'
    )
    with pytest.raises(HostError):
        build_authorized_line("/usr/bin/borg", Path("/r"), 'x" ,command="sh', "vsh-01")
    with pytest.raises(HostError):
        build_authorized_line("/usr/bin/borg", Path("/r"), 'ssh-ed25519 AA"\ncommand="sh', "h")


def test_merging_replaces_only_that_slaves_line() -> None:
    old = "ssh-ed25519 AAAA admin\nold line vs-backup:vsh-01\nother vs-backup:vsh-02\n"
    new = replace_marked(old, "vs-backup:vsh-01", "new line vs-backup:vsh-01")
    assert new == "ssh-ed25519 AAAA admin\nother vs-backup:vsh-02\nnew line vs-backup:vsh-01\n"
    assert replace_marked(new, "vs-backup:vsh-01", "new line vs-backup:vsh-01") == new


def test_retention_policy_from_settings() -> None:
    assert KeepPolicy.of_settings(Settings.parse("c", "")).prune_args() == ["--keep-last=7"]
    settings = Settings.parse("c", "BACKUP_KEEP=3\nBACKUP_KEEP_LAST=0\nBACKUP_KEEP_DAILY=7\n"
                                   "BACKUP_KEEP_MONTHLY=2\n")  # fmt: skip
    policy = KeepPolicy.of_settings(settings)
    assert policy.prune_args() == ["--keep-daily=7", "--keep-monthly=2"]
    assert policy.describe() == "keep-daily=7, keep-monthly=2"
    with pytest.raises(UsageError, match="every archive"):
        KeepPolicy().prune_args()


def _log(message: str, level: str = "INFO") -> str:
    return json.dumps({"type": "log_message", "message": message, "levelname": level})


def test_prune_answer_and_log_messages() -> None:
    stderr = "\n".join([
        _log("Keeping archive (rule: secondly #1):     web.20261203T000000Z  Tue [89b7]"),
        _log("Would prune:                             web.20261202T000000Z  Tue [1e48]"),
        _log("Pruning archive (1/2):                   web.20261201T000000Z  Tue [3057]"),
        "Remote: ssh: connect to host vsm port 22: Connection refused",
        _log("Connection closed by remote host", "ERROR"),
    ])  # fmt: skip
    messages = log_messages(stderr)
    assert pruned_archives(messages) == ["web.20261202T000000Z", "web.20261201T000000Z"]
    assert log_messages(stderr, levels=("ERROR",)) == [
        "Remote: ssh: connect to host vsm port 22: Connection refused",
        "Connection closed by remote host",
    ]


def test_borg_json_answers() -> None:
    created = parse_created(json.dumps({"archive": {"name": "web.20261201T020000Z",
        "duration": 1.5, "stats": {"original_size": 10, "compressed_size": 5,
        "deduplicated_size": 2, "nfiles": 3}}}))  # fmt: skip
    assert (created.archive, created.deduplicated_bytes, created.files) == (
        "web.20261201T020000Z", 2, 3)  # fmt: skip
    listed = parse_list(json.dumps({"archives": [
        {"name": "web.20261201T020000Z", "id": "aa", "start": "2026-12-01T02:00:00"},
        {"name": "web.20261202T020000Z.checkpoint", "id": "bb", "time": "2026-12-02T02:00:00"},
    ]}))  # fmt: skip
    assert [(a.guest, a.checkpoint) for a in listed] == [("web", False), ("web", True)]


class FakeRepository:
    def __init__(self, archives: list[Listed]) -> None:
        self.listed = archives

    def archives(self, guest: str | None = None) -> list[Listed]:
        return self.listed

    def last_segment(self) -> int:
        return 7


def test_history_check_catches_a_vanished_or_rewritten_archive(tmp_path: Path) -> None:
    records = Records(Inventory(tmp_path / "inv.db"))
    records.succeeded("web", "vsh-01", "web.20261201T020000Z", "aa")
    records.succeeded("web", "vsh-01", "web.20261202T020000Z", "bb")
    both = [Listed("web.20261201T020000Z", "aa", ""), Listed("web.20261202T020000Z", "bb", "")]
    check_history(FakeRepository(both), records)  # type: ignore[arg-type]
    assert records.last_good() is not None and records.last_good()[0] == 7  # type: ignore[index]
    with pytest.raises(StateError, match=r"vanished: web\.20261201T020000Z"):
        check_history(FakeRepository(both[1:]), records)  # type: ignore[arg-type]
    changed = [both[0], Listed("web.20261202T020000Z", "cc", "")]
    with pytest.raises(StateError, match="rewritten"):
        check_history(FakeRepository(changed), records)  # type: ignore[arg-type]
    records.pruned(["web.20261201T020000Z"])  # the master's own prune is no alarm
    check_history(FakeRepository(both[1:]), records)  # type: ignore[arg-type]
    # An administrator's own deletion is accepted once, then expected no more.
    assert accept_history(FakeRepository([]), records) == ["web.20261202T020000Z"]  # type: ignore[arg-type]
    check_history(FakeRepository([]), records)  # type: ignore[arg-type]


def test_overdue_rule(tmp_path: Path) -> None:
    now = 1_800_000_000.0
    clock = [now - 30 * 3600]
    records = Records(Inventory(tmp_path / "inv.db", clock=lambda: clock[0]))
    records.succeeded("old", "vsh-01", "old.20261201T020000Z", "a")
    clock[0] = now - 3600
    records.succeeded("new", "vsh-01", "new.20261201T020000Z", "b")
    conf = parse_backup("b", "old:hot\nnew:cold\nnever:hot\n")
    assert overdue(records, conf, 24, now) == ["old", "never"]
    records.overdue_mailed("old")
    assert overdue(records, conf, 24, now) == ["never"]
    assert overdue(records, conf, 48, now) == ["never"]


def test_secrets_come_as_one_json_object() -> None:
    text = json.dumps({"repository": "ssh://root@vsm/r", "passphrase": "p", "known_hosts": "k"})
    assert Secrets.parse(text) == Secrets("ssh://root@vsm/r", "p", "k")
    for bad in ("", "[]", '{"repository": "x"}'):
        with pytest.raises(UsageError):
            Secrets.parse(bad)


def test_lvm_snapshots_are_listed_by_origin_and_reverted_by_merge(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lvs = "  web,\n  web.before,web\n  web.vsbackup,web\n  db.x,db\n  webx.y,webx\n"
    assert parse_snapshot_tags(lvs, "web") == ["before", "vsbackup"]
    assert build_merge_argv("vg0", "web.before") == ["lvconvert", "--merge", "--yes",
                                                      "vg0/web.before"]  # fmt: skip
    calls: list[Any] = []
    monkeypatch.setattr(lvm, "cmd_output", lambda argv: calls.append(argv) or lvs)
    paths = resolve_paths({"VS_ROOT_DIR": str(tmp_path), "VS_ETC_DIR": str(tmp_path / "etc")})
    storage = LvmStorage(paths, LvmOptions("vg0", "xfs", 512))
    assert storage.snapshot_tags("web") == ["before", "vsbackup"]
    steps = storage.revert_steps("web", "before")
    assert [s.description for s in steps] == [
        f"unmount {tmp_path}/.snapshots/web.before",
        "merge the LVM snapshot vg0/web.before into vg0/web",
    ]
    with pytest.raises(StateError, match="no snapshot gone"):
        storage.revert_steps("web", "gone")
    # A hot backup's snapshot of an XFS guest is mounted without replaying its log.
    take = storage.snapshot_steps("web", "vsbackup")[0]
    assert take[1].apply.args[3] == "ro,nodev,nosuid,noexec,norecovery,nouuid"  # type: ignore[attr-defined]


class FakeStorage:
    """A storage backend that records what is done (the LVM path, without device-mapper)."""

    def __init__(self, kind: Any, root: Path) -> None:
        self.kind = kind
        self.calls: list[str] = []
        self.top = root

    def root(self, name: str) -> Path:
        return self.top / name

    def snapshot_steps(self, name: str, tag: str) -> tuple[list[Any], Any]:
        from vstools.storage.base import Snapshot

        return [], Snapshot(name, tag, self.top / f".snapshots/{name}.{tag}", f"vg0/{name}.{tag}")

    def remove_snapshot(self, snapshot: Any) -> None:
        self.calls.append(f"remove {snapshot.tag}")

    def create_snapshot(self, name: str, tag: str) -> Any:
        self.calls.append(f"create {tag}")
        return self.snapshot_steps(name, tag)[1]

    def read_view(self, name: str, tag: str) -> tuple[list[Any], Path, list[Any]]:
        """dir: in place; lvm: a snapshot taken and removed (its volume is not mounted)."""
        from vstools.config.values import StorageKind
        from vstools.plan import Step

        if self.kind is StorageKind.DIR:
            return [], self.root(name), []
        snapshot = self.snapshot_steps(name, tag)[1]
        take = Step(f"take {tag}", lambda: self.calls.append(f"create {tag}"))
        drop = Step(f"drop {tag}", lambda: self.calls.append(f"remove {tag}"))
        return [take], snapshot.path, [drop]


@pytest.mark.parametrize("kind", ["lvm", "dir"])
@pytest.mark.parametrize("mode", ["hot", "cold"])
def test_the_guest_is_put_back_as_it_was_even_when_borg_fails(
    kind: str, mode: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from types import SimpleNamespace

    from vstools.backup import slave
    from vstools.config.pool import BackupMode
    from vstools.config.values import StorageKind

    done: list[str] = []
    monkeypatch.setattr(slave, "is_active", lambda host, name: True)
    monkeypatch.setattr(slave, "stop_guest", lambda host, name: done.append("stop"))
    monkeypatch.setattr(slave, "start_guest", lambda host, name: done.append("start"))
    monkeypatch.setattr(slave, "guest_status", lambda host, name: SimpleNamespace(frozen=False))

    def freeze(host: object, name: str, thaw: bool = False) -> None:
        done.append("thaw" if thaw else "freeze")

    monkeypatch.setattr(slave, "freeze_guest", freeze)
    storage = FakeStorage(StorageKind(kind), tmp_path)
    with (
        pytest.raises(RuntimeError),
        slave.still_image(
            None,
            "web",
            BackupMode(mode),
            storage,  # type: ignore[arg-type]
        ) as (view, taken),
    ):
        done.append(f"read {view.relative_to(tmp_path)}")
        raise RuntimeError("borg failed")
    if mode == "cold" and kind == "dir":
        assert done == ["stop", "read web", "start"] and taken.how == "stopped"
    elif mode == "cold":  # a stopped lvm guest's volume is not mounted: read from a snapshot
        assert done == ["stop", "read .snapshots/web.vsbackup", "start"]
        assert storage.calls == ["remove vsbackup", "create vsbackup", "remove vsbackup"]
    elif kind == "dir":
        assert done == ["freeze", "read web", "thaw"] and taken.how == "frozen"
    else:
        assert done == ["read .snapshots/web.vsbackup"] and taken.how == "snapshot"
        assert storage.calls == ["remove vsbackup", "create vsbackup", "remove vsbackup"]
    assert taken.held_s is not None or taken.how == "snapshot"
