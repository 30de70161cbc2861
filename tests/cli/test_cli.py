"""The command-line frame: --help and --version everywhere, exit codes, --json errors, vs-check
and vs-fonctions against configuration trees, and the commands still to be built failing
clearly instead of pretending."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli_helpers import invoke
from vstools.cli.vs_create import build_parser, forwarded_argv
from vstools.errors import ExitCode

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = sorted(p.stem.replace("_", "-") for p in (ROOT / "vstools" / "cli").glob("vs_*.py"))
IMPLEMENTED = {
    "vs-check",
    "vs-monitor",
    "vs-fonctions",
    "vs-setup",
    "vs-control",
    "vs-exec",
    "vs-enter",
    "vs-limit",
    "vs-stats",
    "vs-create",
    "vs-net",
    "vs-scan",
    "vs-get",
    "vs-put",
    "vs-remove",
    "vs-move",
    "vs-backup",
    "vs-snapshot",
    "vs-pkg",
}


def test_every_command_is_an_entry_point() -> None:
    text = (ROOT / "setup.cfg").read_text()
    for command in COMMANDS:
        assert f"{command} = vstools.cli.{command.replace('-', '_')}:main" in text
    assert set(COMMANDS) == IMPLEMENTED


@pytest.mark.parametrize("command", COMMANDS)
def test_help_and_version(command: str, etc_tree: dict[str, str]) -> None:
    shown = invoke(command, ["--help"], etc_tree)
    assert shown.code == 0
    assert shown.out.startswith(f"usage: {command}")
    assert "exit codes: 0 ok" in shown.out
    assert invoke(command, ["--version"], etc_tree).out.startswith(f"{command} 0.")


@pytest.mark.parametrize("argv", [["--name", "a", "--all"], ["--bogus"], []])
def test_usage_errors_exit_2(argv: list[str], etc_tree: dict[str, str]) -> None:
    assert invoke("vs-control", argv, etc_tree).code == ExitCode.USAGE


@pytest.mark.parametrize("name", ["..", "-rf", "a/b", "x;id"])
def test_d15_commands_refuse_bad_names_at_the_command_line(
    name: str, etc_tree: dict[str, str]
) -> None:
    outcome = invoke("vs-create", [f"--name={name}", "--interface", "198.51.100.9"], etc_tree)
    assert outcome.code == ExitCode.USAGE
    assert "invalid guest name" in outcome.err
    assert invoke("vs-enter", ["--", name], etc_tree).code == ExitCode.USAGE
    assert invoke("vs-fonctions", ["valid_name", "--", name], etc_tree).code == ExitCode.USAGE


# ---- vs-check --------------------------------------------------------------------------------

NETWORKS = "1,198.51.100.0/24,198.51.100.1,example.org,203.0.113.53\n2,203.0.113.0/24,203.0.113.1\n"
GUEST = (
    "NAME={name}\nCONTEXT={context}\nIP={ip}\nRSS_LIMIT=128\nDISK_LIMIT=1024\n"
    "TMPFS_LIMIT=16\nPROC_LIMIT=150\nCPU_LIMIT=1/4\n"
)


def _guest(
    env: dict[str, str], name: str, ip: str, context: int, dirname: str | None = None
) -> Path:
    directory = Path(env["VS_GUESTS_CONF_DIR"]) / (dirname or name)
    directory.mkdir()
    (directory / "guest.conf").write_text(GUEST.format(name=name, ip=ip, context=context))
    return directory


def test_vs_check_is_silent_on_a_valid_tree(etc_tree: dict[str, str]) -> None:
    etc = Path(etc_tree["VS_ETC_DIR"])
    (etc / "networks.conf").write_text(NETWORKS)
    (etc / "firewall.conf").write_text("enable\nallow from 0/0 to tcp/80\n")
    web = _guest(etc_tree, "web", "198.51.100.10", 10001)
    (web / "firewall.conf").write_text("enable\nallow from 203.0.113.0/24 to tcp/22\n")
    _guest(etc_tree, "db", "203.0.113.20", 10002)
    outcome = invoke("vs-check", [], etc_tree)
    assert (outcome.code, outcome.out, outcome.err) == (0, "", "")


def test_vs_check_lists_every_problem_of_the_tree(etc_tree: dict[str, str]) -> None:
    etc = Path(etc_tree["VS_ETC_DIR"])
    (etc / "networks.conf").write_text(NETWORKS + "3,198.18.0.5/15,198.18.0.1\n")
    (etc / "slaves.conf").write_text("vsh-01\nvsh-02:fast\n")
    web = _guest(etc_tree, "web", "198.51.100.10", 10001)
    (web / "firewall.conf").write_text("enable\ndney from 0/0 to tcp/22\n")
    _guest(etc_tree, "db", "198.51.100.10", 10001)  # same address and context as web (db is
    # read first: directories are checked in name order)
    _guest(etc_tree, "mail", "198.18.5.5", 10003)  # in no network (networks.conf is broken)
    _guest(etc_tree, "other", "203.0.113.7", 10004, dirname="renamed")
    (Path(etc_tree["VS_GUESTS_CONF_DIR"]) / "bad;name").mkdir()
    outcome = invoke("vs-check", [], etc_tree)
    assert outcome.code == ExitCode.CONFIG
    guests = etc_tree["VS_GUESTS_CONF_DIR"]
    lines = outcome.err.splitlines()
    expected = [
        f"{etc}/networks.conf:3:3: host bits set in 198.18.0.5/15",
        f"{etc}/slaves.conf:2:8: unknown option 'fast'",
        f"{guests}/bad;name:0:0: invalid guest name 'bad;name'",
        f"{guests}/web/guest.conf:3:4: 198.51.100.10 is already the address of guest db",
        f"{guests}/web/guest.conf:2:9: context 10001 is already used by guest db",
        f"{guests}/renamed/guest.conf:1:6: NAME=other but the guest's directory is renamed",
        f"{guests}/web/firewall.conf:2:1: unknown keyword 'dney'",
    ]
    for want in expected:
        assert any(line.startswith(want) for line in lines), (want, lines)
    # networks.conf is invalid, so "in no network" cannot be judged and is not claimed.
    assert not any("in no network" in line for line in lines)
    assert len(lines) == len(expected)


def test_vs_check_named_files_and_json(tmp_path: Path, etc_tree: dict[str, str]) -> None:
    good = tmp_path / "firewall.conf"
    good.write_text("enable\nallow from 0/0 tcp/80\n")  # valid, with a warning
    bad = tmp_path / "backup.conf.sample"
    bad.write_text("web:hot\ndb:warm\n")
    odd = tmp_path / "notes.txt"
    odd.write_text("")
    outcome = invoke("vs-check", [str(good)], etc_tree)
    assert outcome.code == 0 and "warning: no 'from' or 'to' before the ports" in outcome.err
    outcome = invoke("vs-check", ["--json", str(good), str(bad), str(odd)], etc_tree)
    assert outcome.code == ExitCode.CONFIG
    payload = outcome.json()
    assert payload["valid"] is False
    assert [(p["path"], p["line"], p["col"], p["severity"]) for p in payload["problems"]] == [
        (str(good), 2, 16, "warning"),
        (str(bad), 2, 4, "error"),
        (str(odd), 0, 0, "error"),
    ]


def test_vs_check_with_an_unreadable_vs_tools_conf(etc_tree: dict[str, str]) -> None:
    (Path(etc_tree["VS_ETC_DIR"]) / "vs-tools.conf").write_text("ROOT_DIR=relative\n")
    outcome = invoke("vs-check", [], etc_tree)
    assert outcome.code == ExitCode.CONFIG
    assert "vs-tools.conf:1:10: ROOT_DIR: 'relative' must be an absolute path" in outcome.err


# ---- vs-fonctions ----------------------------------------------------------------------------


def test_vs_fonctions_list_and_calls(etc_tree: dict[str, str]) -> None:
    (Path(etc_tree["VS_ETC_DIR"]) / "networks.conf").write_text(NETWORKS)
    listing = invoke("vs-fonctions", ["--list"], etc_tree)
    assert listing.code == 0
    names = [line.split()[0] for line in listing.out.splitlines()]
    assert {"check", "parse", "network_for", "guests", "valid_name", "paths"} <= set(names)
    found = invoke("vs-fonctions", ["network_for", "203.0.113.77"], etc_tree)
    assert found.code == 0
    assert found.out.splitlines()[:3] == ["vlan:2", "network:203.0.113.0/24", "gateway:203.0.113.1"]
    as_json = invoke("vs-fonctions", ["--json", "network_for", "198.51.100.3"], etc_tree).json()
    assert as_json["result"]["nameservers"] == ["203.0.113.53"]
    missing = invoke("vs-fonctions", ["network_for", "198.18.0.1"], etc_tree)
    assert missing.code == ExitCode.NOT_FOUND and "in no network" in missing.err
    paths = invoke("vs-fonctions", ["paths"], etc_tree)
    assert f"root_dir:{etc_tree['VS_ROOT_DIR']}" in paths.out.splitlines()


def test_vs_fonctions_refuses_what_is_not_in_the_registry(etc_tree: dict[str, str]) -> None:
    for argv in (["os.system", "id"], ["__import__"], ["load_settings"]):
        outcome = invoke("vs-fonctions", argv, etc_tree)
        assert outcome.code == ExitCode.USAGE and "unknown function" in outcome.err
    wrong = invoke("vs-fonctions", ["network_for"], etc_tree)
    assert wrong.code == ExitCode.USAGE and "usage: vs-fonctions network_for IP" in wrong.err
    bad_ip = invoke("vs-fonctions", ["network_for", "198.51.100.٨"], etc_tree)
    assert bad_ip.code == ExitCode.USAGE


def test_vs_fonctions_check_fails_like_vs_check(etc_tree: dict[str, str], tmp_path: Path) -> None:
    bad = tmp_path / "networks.conf"
    bad.write_text("1,198.51.100.0/24,198.51.100.300\n")
    outcome = invoke("vs-fonctions", ["--json", "check", str(bad)], etc_tree)
    assert outcome.code == ExitCode.CONFIG
    assert outcome.json()["problems"][0]["col"] == 19


# ---- the installed scripts -------------------------------------------------------------------


def test_installed_scripts_run(etc_tree: dict[str, str]) -> None:
    bindir = Path(sys.executable).parent
    result = subprocess.run(
        [str(bindir / "vs-fonctions"), "valid_name", "web-1"],
        env=etc_tree,
        capture_output=True,
        text=True,
        check=False,
    )
    assert (result.returncode, result.stdout) == (0, "web-1\n")
    result = subprocess.run(
        [str(bindir / "vs-pkg"), "--name", "nosuch", "--show", "x"],
        env=etc_tree,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == ExitCode.NOT_FOUND and result.stdout == ""


def test_bin_launchers_run_every_command_from_the_checkout(etc_tree: dict[str, str]) -> None:
    for command in COMMANDS:
        launcher = ROOT / "bin" / command
        assert launcher.is_symlink(), f"bin/{command} missing"
    result = subprocess.run(
        [str(ROOT / "bin" / "vs-fonctions"), "valid_name", "db"],
        env=etc_tree,
        capture_output=True,
        text=True,
        check=False,
    )
    assert (result.returncode, result.stdout) == (0, "db\n")


def test_vs_create_forwards_its_options_to_the_slave_as_given() -> None:
    parser = build_parser()
    given = parser.parse_args(
        ["--name", "w", "--interface", "198.51.100.3", "--rss", "1024", "--disk", "2048",
         "--tmpfs", "64", "--proc", "100", "--cpu", "1/4", "--domain", "example.org",
         "--nameserver", "198.51.100.1,198.51.100.2", "--enable", "--host", "vsh-01",
         "--template", "/x.tar", "--json"]
    )  # fmt: skip
    again = parser.parse_args(forwarded_argv(given))
    assert "--host" not in forwarded_argv(given)
    assert {k: v for k, v in vars(again).items() if k != "host"} == {
        k: v for k, v in vars(given).items() if k != "host"
    }
