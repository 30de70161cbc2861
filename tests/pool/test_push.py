"""The forced command of a move's one-time key (pure checks, no exec): only an rsync that writes
into the guest's receiving place, with a push's options, is ever run."""

from __future__ import annotations

from pathlib import Path

import pytest

from vstools.config.settings import Settings
from vstools.errors import UsageError
from vstools.host.hostconfig import HostConfig
from vstools.paths import Paths
from vstools.pool.push import rsync_receive


@pytest.mark.parametrize(
    "command",
    [
        "",
        "id",
        "rsync --server --sender -logDtpre.iLsfxCIvu . ./",  # reading back
        "rsync --server -logDtpre.iLsfxCIvu . /etc/",  # anywhere but its place
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
        rsync_receive(host, "web", command)
