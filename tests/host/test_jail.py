"""The jail of rsync's server side (vstools.host.jail, vstools.host.rsync_server): a root
process copying a guest's files sees that one directory and the host's read-only system
directories, nothing else; a symlink the guest planted (absolute or ``..``) resolves inside the
jail; nothing outside the directory can be written; the host's view is left as it was."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vstools.config.settings import Settings
from vstools.errors import NotFoundError, UsageError
from vstools.host.hostconfig import HostConfig
from vstools.host.rsync_server import serve
from vstools.paths import Paths

# Each probe prints its name and whether it succeeded (0) or not.
PROBES = {
    "absolute_link": "cat esc/marker",
    "relative_link": "cat rel/marker",
    "host_etc": "cat /etc/passwd",
    "host_proc": "ls /proc/1",
    "write_data": "touch /data/vst-written",
    "write_root": "touch /vst-written",
    "write_usr": "touch /usr/vst-written",
    "rsync_runs": "rsync --version",
}


def _jailed(tmp_path: Path, *, writable: bool) -> dict[str, int]:
    data, secret = tmp_path / "data", tmp_path / "secret"
    for directory in (data, secret):
        directory.mkdir(exist_ok=True)
    (secret / "marker").write_text("host secret\n")
    for name, target in (("esc", str(secret)), ("rel", "../secret")):
        if not (data / name).is_symlink():
            (data / name).symlink_to(target)
    script = "; ".join(f"{body} >/dev/null 2>&1; echo {name}:$?" for name, body in PROBES.items())
    code = (
        "import sys; from pathlib import Path; from vstools.host.jail import exec_jailed;"
        f" exec_jailed(['sh', '-c', sys.argv[1]], Path({str(data)!r}), writable={writable},"
        f" scratch=Path({str(tmp_path / 'scratch')!r}))"
    )
    done = subprocess.run([sys.executable, "-c", code, script], capture_output=True,
                          text=True, check=True)  # fmt: skip
    found = dict(line.split(":") for line in done.stdout.split())
    return {name: int(status) for name, status in found.items()}


@pytest.mark.privileged
def test_a_jailed_reader_reaches_its_directory_only(tmp_path: Path) -> None:
    seen = _jailed(tmp_path, writable=False)
    assert seen == {
        "absolute_link": 1,
        "relative_link": 1,
        "host_etc": 1,
        "host_proc": 2,
        "write_data": 1,
        "write_root": 1,
        "write_usr": 1,
        "rsync_runs": 0,
    }
    assert not (tmp_path / "data" / "vst-written").exists()
    # The host's view is unchanged: the jail's root was built in the process's own namespace.
    assert list((tmp_path / "scratch").iterdir()) == []
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(tmp_path) not in mounts


@pytest.mark.privileged
def test_a_jailed_writer_writes_its_directory_and_nothing_else(tmp_path: Path) -> None:
    seen = _jailed(tmp_path, writable=True)
    assert seen["write_data"] == 0 and (tmp_path / "data" / "vst-written").is_file()
    assert seen["write_root"] == seen["write_usr"] == 1
    assert seen["absolute_link"] == seen["relative_link"] == seen["host_etc"] == 1


def _host(tmp_path: Path) -> HostConfig:
    paths = Paths(*(tmp_path / d for d in ("etc", "guests", "roots", "state", "run")))
    return HostConfig.given(paths, Settings())


@pytest.mark.parametrize(
    "asked",
    [
        ["--server", "--sender", "-logDtpre.iLsfxCIvu", ".", "relative/"],
        ["--server", "--sender", "-logDtpre.iLsfxCIvu", ".", "/"],
        ["--server", "--sender", "-logDtpre.iLsfxCIvu", ".", "/tmp/../etc/"],
        ["--server", "-logDtpre.iLsfxCIvu", "--log-file=/etc/x", ".", "/tmp/"],
        ["--server", "-s", "-logDtpre.iLsfxCIvu", ".", "/tmp/"],
        ["-e", "sh", ".", "/tmp/"],
        [],
    ],
)
def test_the_masters_copies_ask_for_an_rsync_server_and_a_plain_directory(
    asked: list[str], tmp_path: Path
) -> None:
    with pytest.raises(UsageError, match="refused"):
        serve(_host(tmp_path), asked)


def test_a_directory_reached_through_a_symlink_is_refused(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(UsageError, match="through a symlink"):
        serve(_host(tmp_path), ["--server", "--sender", "-logDtpr", ".", f"{tmp_path}/link/"])
    with pytest.raises(NotFoundError, match="no directory"):
        serve(_host(tmp_path), ["--server", "-logDtpr", ".", f"{tmp_path}/missing/"])
