"""The door to root's authorized_keys: restricted lines only, others kept, mode and owner kept."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vstools.errors import HostError
from vstools.host.authkeys import restricted_line, set_marked

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHq0 someone@somewhere"


def test_a_line_is_restricted_and_what_came_from_elsewhere_cannot_add_options() -> None:
    command = "/usr/sbin/vs-fonctions push_receive web"
    line = restricted_line(KEY, whose="vsh-01", command=command, mark="vs-tools-push:web",
                           source="198.18.0.11", expires="202612021000")  # fmt: skip
    assert line == (
        'restrict,from="198.18.0.11",expiry-time="202612021000Z",command="/usr/sbin/vs-fonctions'
        ' push_receive web" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHq0 vs-tools-push:web\n'
    )
    for hostile in ('x" ,command="sh', 'ssh-ed25519 AA"\ncommand="sh', "ssh-ed25519", ""):
        with pytest.raises(HostError):
            restricted_line(hostile, whose="vsh-01", command="true", mark="m")
    with pytest.raises(HostError):
        restricted_line(KEY, whose="vsh-01", command='true",command="sh', mark="m")
    with pytest.raises(HostError):
        restricted_line(KEY, whose="vsh-01", command="true", mark="m", source='1.2.3.4",x="')


def test_marked_lines_are_replaced_and_removed_and_nothing_else_changes(tmp_path: Path) -> None:
    keys = tmp_path / "ssh" / "authorized_keys"
    keys.parent.mkdir()
    keys.write_text("ssh-ed25519 AAAA admin\nssh-ed25519 BBBB vs-backup:vsh-02")  # no final newline
    keys.chmod(0o640)
    os.chown(keys, 1234, 5678)
    locks = tmp_path / "locks"
    mark = "vs-backup:vsh-01"
    assert set_marked(keys, mark, f"ssh-ed25519 CCCC {mark}\n", lock_dir=locks)
    assert set_marked(keys, mark, f"ssh-ed25519 DDDD {mark}", lock_dir=locks)
    assert not set_marked(keys, mark, f"ssh-ed25519 DDDD {mark}", lock_dir=locks)
    assert keys.read_text() == (
        "ssh-ed25519 AAAA admin\nssh-ed25519 BBBB vs-backup:vsh-02\n"
        "ssh-ed25519 DDDD vs-backup:vsh-01\n"
    )
    info = keys.stat()
    assert (info.st_mode & 0o7777, info.st_uid, info.st_gid) == (0o640, 1234, 5678)
    assert set_marked(keys, mark, None, lock_dir=locks)
    assert keys.read_text() == "ssh-ed25519 AAAA admin\nssh-ed25519 BBBB vs-backup:vsh-02\n"
    # A mark is a whole last word: vs-backup:vsh-0 does not remove vs-backup:vsh-02.
    assert not set_marked(keys, "vs-backup:vsh-0", None, lock_dir=locks)
    missing = tmp_path / "new" / "authorized_keys"
    assert not set_marked(missing, "m", None, lock_dir=locks) and not missing.exists()
    assert set_marked(missing, "m", "ssh-ed25519 EEEE m", lock_dir=locks)
    assert missing.stat().st_mode & 0o7777 == 0o600
