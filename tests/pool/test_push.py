"""The forced command of a move's one-time key (pure checks, no exec): only an rsync that writes
into the guest's receiving place, with a push's options, is ever run."""

from __future__ import annotations

from pathlib import Path

import pytest

from vstools.config.settings import Settings
from vstools.errors import NotFoundError, UsageError
from vstools.host.hostconfig import HostConfig
from vstools.paths import Paths
from vstools.pool.push import push_receive


@pytest.mark.parametrize(
    "command",
    [
        "",
        "id",
        "rsync --server --sender -logDtpre.iLsfxCIvu . ./",  # reading back
        "rsync --server -logDtpre.iLsfxCIvu . /etc/",  # anywhere but its places
        "rsync --server -logDtpre.iLsfxCIvu . ../",
        "rsync --server -logDtpre.iLsfxCIvu . conf/../../",
        "rsync --server -logDtpre.iLsfxCIvu --log-file=/etc/x . ./",
        "rsync --server -s -logDtpre.iLsfxCIvu . ./",
        "sh -c 'rsync --server -a . ./'",
    ],
)
def test_the_copy_key_runs_only_an_rsync_that_writes_into_the_guests_place(
    command: str, tmp_path: Path
) -> None:
    paths = Paths(*(tmp_path / d for d in ("etc", "guests", "roots", "state", "run")))
    host = HostConfig.given(paths, Settings())
    (tmp_path / "roots" / ".web.receiving").mkdir(parents=True)
    with pytest.raises(UsageError, match="refused"):
        push_receive(host, "web", command)


def test_a_push_is_told_apart_from_a_refusal_and_names_its_place(tmp_path: Path) -> None:
    """What passes the checks reaches the exec only when the place exists: a missing place is
    'not found', never a write elsewhere."""
    paths = Paths(*(tmp_path / d for d in ("etc", "guests", "roots", "state", "run")))
    host = HostConfig.given(paths, Settings())
    (tmp_path / "roots" / ".web.receiving").mkdir(parents=True)
    with pytest.raises(NotFoundError, match="being received"):
        push_receive(host, "web", "rsync --server -logDtpre.iLsfxCIvu --numeric-ids . conf/")
