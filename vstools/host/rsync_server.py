"""rsync's server side on a slave, jailed: what the other end of a pool copy runs here, over
SSH, to read a guest's files or to write them. It is a root process walking files a running
guest may be shaping, so it never runs in the host's view of the filesystem: it runs in a jail
(vstools.host.jail) where the one directory it copies is ``/data`` (read-only when it sends)
and nothing of the host but its system directories exists.

Two doors lead here: the master's copies (vs-get, vs-put, a relayed vs-move: ``rsync
--rsync-path='vs-fonctions rsync_server --'``), and a move's one-time key between slaves,
whose forced command allows only a push into the guest's receiving place
(vstools.pool.push.push_receive). Both check the command rsync asks for, rrsync-like: only
``rsync --server`` with the options the toolkit's copies use, and one directory."""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from vstools.errors import UsageError
from vstools.host.hostconfig import HostConfig
from vstools.host.jail import check_data_dir, exec_jailed

# The short options rsync passes its server for our copies (no 's': no protected args), and
# the long ones (rsync adds -e.FLAGS, its protocol's capabilities).
_SHORT = re.compile(r"^-[ACDEHIJKLNORSUWXbcdgklmnopqrtuvxyz]*(e\d*\.\w*)?$")
# The master's rsync starts this, not a bare rsync, as its server on the slave.
REMOTE_RSYNC = "vs-fonctions rsync_server --"
_LONG = re.compile(
    r"^--(delete|partial|numeric-ids|log-format=%i|bwlimit=\d+|compress-level=\d|sender)$"
)


def jail_scratch(host: HostConfig) -> Path:
    """Where this host builds its jails' roots (each in its own mount namespace: the host's
    view of it stays an empty directory)."""
    return host.paths.run_dir / "jail"


def check_server_command(asked: Sequence[str], *, sender: bool) -> str:
    """The directory ``asked`` (rsync's server command line) copies from (``sender``) or into:
    UsageError unless it is an ``rsync --server`` with our copies' options only."""
    shown = " ".join(asked) or "no command"
    if len(asked) < 4 or list(asked[:2]) != ["rsync", "--server"] or asked[-2] != ".":
        raise UsageError(f"refused: {shown} (only rsync's server side of a copy)")
    if ("--sender" in asked) != sender:
        if sender:
            raise UsageError(f"refused: {shown} (this copy only sends from here)")
        raise UsageError("refused: rsync --server --sender (nothing can be read back from here)")
    for option in asked[2:-2]:
        if not (_SHORT.match(option) or _LONG.match(option)):
            raise UsageError(f"refused: rsync option {option!r} (only those of a copy)")
    return asked[-1]


def exec_server(asked: Sequence[str], data: Path, *, scratch: Path) -> NoReturn:
    """Become rsync's server, jailed with ``data`` as its directory: it sends from there with
    ``--sender`` (read-only), else it writes there."""
    sys.stdout.flush()  # rsync's protocol owns stdout from here on
    sender = "--sender" in asked
    exec_jailed([*asked[:-1], "./"], data, writable=not sender, scratch=scratch)


def serve(host: HostConfig, asked: Sequence[str]) -> NoReturn:
    """The master's copies: rsync's server for the directory it names, sending or receiving,
    jailed. The directory is the host's path to a guest's files, with no symlink on the way
    (the master, root here, names it: the check is against mistakes, the jail against the
    guest)."""
    argv = list(asked)
    if argv[:1] == ["--server"]:  # rsync --rsync-path='vs-fonctions rsync_server --'
        argv = ["rsync", *argv]
    where = check_server_command(argv, sender="--sender" in argv)
    exec_server(argv, check_data_dir(where), scratch=jail_scratch(host))
