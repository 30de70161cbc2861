"""The pool's door to OpenSSH and rsync: the command lines it builds (batch mode, strict host
keys, connection reuse, timeouts; rsync keeping every attribute), how it reads rsync's
progress, which arrives a character at a time, and the armed calls of a move (prepared ahead,
acting only on the master's word)."""

from __future__ import annotations

import io
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from vstools.host.ssh import (
    Armed,
    NotArmed,
    ProgressReader,
    Remote,
    SshOptions,
    build_rsync_argv,
    build_ssh_argv,
    build_ssh_master_argv,
    parse_progress,
    wait_for_go,
)

OPTIONS = SshOptions(key="/etc/vs-tools/pool_key", known_hosts="/etc/vs-tools/known_hosts",
                     control_dir=Path("/run/vs-tools/ssh"), connect_timeout_s=7,
                     alive_interval_s=2, alive_count=3)  # fmt: skip


def _settings(argv: list[str]) -> dict[str, str]:
    return dict(argv[i + 1].split("=", 1) for i, word in enumerate(argv) if word == "-o")


def test_ssh_never_prompts_never_learns_a_host_key_and_reuses_connections() -> None:
    argv = build_ssh_argv(OPTIONS, "vsh-01", ["vs-fonctions", "--json", "guest_facts", "web"])
    assert argv[0] == "ssh" and argv[-3:] == ["vsh-01", "--", "vs-fonctions --json guest_facts web"]
    settings = _settings(argv)
    assert settings["BatchMode"] == "yes" and settings["StrictHostKeyChecking"] == "yes"
    assert settings["UserKnownHostsFile"] == "/etc/vs-tools/known_hosts"
    assert settings["GlobalKnownHostsFile"] == "/dev/null"
    assert settings["ForwardAgent"] == "no" and settings["IdentitiesOnly"] == "yes"
    assert settings["ControlPath"] == "/run/vs-tools/ssh/%C"
    assert (settings["ConnectTimeout"], settings["ServerAliveInterval"],
            settings["ServerAliveCountMax"]) == ("7", "2", "3")  # fmt: skip
    assert argv[argv.index("-i") + 1] == "/etc/vs-tools/pool_key"
    assert "-T" in argv  # never a terminal


def test_a_remote_command_is_quoted_word_by_word() -> None:
    hostile = ["vs-fonctions", "valid_name", "--", "x; touch /tmp/vst-pwned", "$(id)"]
    remote = build_ssh_argv(OPTIONS, "vsh-01", hostile)[-1]
    assert shlex.split(remote) == hostile


def test_rsync_keeps_every_attribute_and_honours_the_slave_options() -> None:
    argv = build_rsync_argv("vsh-01:/var/lib/vservers/web/", "/store/.web.partial/root/",
                            ssh=OPTIONS, bwlimit_kib=2048, compress=True)  # fmt: skip
    assert argv[:3] == ["rsync", "-aHAXS", "--numeric-ids"]
    for option in ("--delete", "--partial", "--bwlimit=2048", "--compress", "--info=progress2"):
        assert option in argv
    ssh = shlex.split(argv[argv.index("-e") + 1])
    assert ssh[0] == "ssh" and _settings(ssh)["BatchMode"] == "yes"
    assert argv[-2:] == ["vsh-01:/var/lib/vservers/web/", "/store/.web.partial/root/"]
    quiet = build_rsync_argv("a/", "b/", delete=False, partial=False, progress=False)
    assert quiet == ["rsync", "-aHAXS", "--numeric-ids", "a/", "b/"]


def test_progress_is_read_across_chunks_cut_anywhere() -> None:
    output = ("\r         32,768   0%    0.00kB/s    0:00:00  "
              "\r     12,000,000  57%   96.07MB/s    0:00:01 (xfr#1, to-chk=3/5)"
              "\r     21,000,000 100%   99.65MB/s    0:00:00 (xfr#4, to-chk=0/5)\n")  # fmt: skip
    reader = ProgressReader()
    seen = [f for f in (reader.feed(c) for c in output) if f is not None]
    assert [f.bytes for f in seen] == [32_768, 12_000_000, 21_000_000]
    assert (seen[-1].percent, seen[-1].rate, seen[-1].eta) == (100, "99.65MB/s", "0:00:00")
    assert parse_progress(output) == seen[-1]
    assert parse_progress("sending incremental file list\n") is None


def test_a_master_connection_is_held_for_others_and_they_only_ever_reuse_it() -> None:
    direct = SshOptions(key="/run/vs-tools/pool/push/web/key", port=22, host_key_alias="vsh-02")
    master = build_ssh_master_argv(direct, "198.18.0.12", "/run/vs-tools/pool/push/web/mux-7")
    settings = _settings(master)
    assert (settings["ControlMaster"], settings["ControlPath"], settings["ControlPersist"]) == (
        "yes", "/run/vs-tools/pool/push/web/mux-7", "no")  # fmt: skip
    assert master[-3:] == ["-N", "-T", "198.18.0.12"]  # no command: it only holds the connection
    assert settings["BatchMode"] == "yes" and settings["HostKeyAlias"] == "vsh-02"
    # ssh takes the first value of an option: the master's own come first, and only once.
    assert [w for w in master if w.startswith("ControlMaster=")] == ["ControlMaster=yes"]
    reusing = SshOptions(key=direct.key, mux_socket="/run/vs-tools/pool/push/web/mux-7")
    settings = _settings(build_ssh_argv(reusing, "198.18.0.12"))
    # Never becomes a master itself: without the socket, it connects on its own.
    assert (settings["ControlMaster"], settings["ControlPath"]) == (
        "no", "/run/vs-tools/pool/push/web/mux-7")  # fmt: skip


@pytest.mark.parametrize(
    ("line", "words"),
    [("go\n", []), ("go copy root,conf\n", ["copy", "root,conf"]), ("", None),
     ("gone\n", None), ("cancel\n", None), ("\n", None),
     (" go send vspool3 vspool2\n", ["send", "vspool3", "vspool2"])],
)  # fmt: skip
def test_an_armed_call_says_it_is_ready_and_acts_only_on_go(line: str, words: object) -> None:
    out = io.StringIO()
    assert wait_for_go(io.StringIO(line), out) == words
    assert out.getvalue() == "armed\n"


# A stand-in for `vs-fonctions --json FUNCTION` on a slave: prepared, it says so, then acts
# (touches the file named) only on go, and answers as vs-fonctions does.
_SLAVE = """
import json, sys
from vstools.host.ssh import wait_for_go
if sys.argv[2] == "fail":
    print(json.dumps({"error": "no such guest", "exit_code": 3}))
    sys.exit(3)
words = wait_for_go(sys.stdin, sys.stdout)
if words is not None:
    open(sys.argv[1], "w").write(" ".join(words))
print(json.dumps({"result": {"acted": words is not None, "words": words}}))
"""


def _armed(tmp_path: Path, mode: str = "ok") -> tuple[Armed, Path]:
    marker = tmp_path / "acted"
    errors = tempfile.TemporaryFile()  # noqa: SIM115 - closed by Armed
    process = subprocess.Popen([sys.executable, "-c", _SLAVE, str(marker), mode],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=errors)  # fmt: skip
    return Armed(Remote("vsh-02", SshOptions()), "receive_start_armed", process, errors), marker


def test_an_armed_call_acts_on_go_and_answers_as_a_call(tmp_path: Path) -> None:
    armed, marker = _armed(tmp_path)
    assert armed.wait_ready(timeout_s=30)
    assert not marker.exists()  # ready, waiting: nothing done yet
    assert armed.go("copy", "root,conf") == {"acted": True, "words": ["copy", "root,conf"]}
    assert marker.read_text() == "copy root,conf"


def test_a_cancelled_armed_call_does_nothing(tmp_path: Path) -> None:
    armed, marker = _armed(tmp_path)
    assert armed.wait_ready(timeout_s=30)
    armed.cancel()
    assert armed.process.returncode == 0 and not marker.exists()


def test_an_armed_call_that_failed_before_it_was_ready_is_not_armed(tmp_path: Path) -> None:
    armed, marker = _armed(tmp_path, "fail")
    with pytest.raises(NotArmed):
        armed.go()
    assert not marker.exists()
