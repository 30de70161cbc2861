"""The pool's door to OpenSSH and rsync: the command lines it builds (batch mode, strict host
keys, connection reuse, timeouts; rsync keeping every attribute) and how it reads rsync's
progress, which arrives a character at a time."""

from __future__ import annotations

import shlex
from pathlib import Path

from vstools.host.ssh import (
    ProgressReader,
    SshOptions,
    build_rsync_argv,
    build_ssh_argv,
    parse_progress,
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
