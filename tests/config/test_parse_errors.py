"""Catalogue P1-P4, P6: every malformed line class is reported at its exact line and column and
rejects the whole file; look-alike digits are not numbers; host bits are an error; nothing in a
config is ever executed."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import pytest

from vstools.config.create import CreateConf
from vstools.config.files import FILE_KINDS
from vstools.config.firewall import parse_firewall
from vstools.config.guest import GuestConf
from vstools.config.monitor import MonitorConf
from vstools.config.networks import parse_networks
from vstools.config.settings import Settings
from vstools.errors import ConfigError, Severity

PARSERS: dict[str, Any] = {name: kind.parse for name, kind in FILE_KINDS.items()}

GOOD = {
    "networks.conf": "1,198.51.100.0/24,198.51.100.1,example.org,203.0.113.53\n",
    "firewall.conf": "enable\nallow from 203.0.113.0/24 to tcp/22\n",
    "slaves.conf": "vsh-01\n",
    "backup.conf": "web:hot\n",
    "create.conf": "DEFAULT_VLAN=0\n",
    "monitor.conf": "MONITOR_RSS_HITS=yes\n",
    "guest.conf": (
        "NAME=web\nCONTEXT=10001\nIP=198.51.100.10\nRSS_LIMIT=128\nDISK_LIMIT=1024\n"
        "TMPFS_LIMIT=16\nPROC_LIMIT=150\nCPU_LIMIT=1/4\n"
    ),
    "vs-tools.conf": "SYSLOG=yes\n",
}

# A valid line after the broken one: it must not be applied either (the file is rejected whole).
AFTER = {
    "networks.conf": "7,198.18.0.0/15,198.18.0.1\n",
    "firewall.conf": "deny from 0/0 to udp/53\n",
    "slaves.conf": "vsh-09:compress\n",
    "backup.conf": "db:cold\n",
}

# (file, broken line, expected column, words the message must contain)
CASES = [
    ("networks.conf", "x,198.51.100.0/24,198.51.100.1", 1, "VLAN id"),
    ("networks.conf", "5000,198.51.100.0/24,198.51.100.1", 1, "out of range"),
    ("networks.conf", "2,198.51.100.7/24,198.51.100.1", 3, "host bits set"),
    ("networks.conf", "2,198.51.100.0/33,198.51.100.1", 16, "prefix length"),
    ("networks.conf", "2,203.0.113.0/24,198.51.100.1", 18, "not a host address"),
    ("networks.conf", "2,203.0.113.0/24,203.0.113.255", 18, "not a host address"),
    ("networks.conf", "2,203.0.113.0/24,203.0.113.1,bad_domain", 30, "invalid host name"),
    ("networks.conf", "2,203.0.113.0/24,203.0.113.1,ex.org,203.0.113.300", 37, "not an IPv4"),
    ("networks.conf", "2,203.0.113.0/24", 1, "expected 3 to 5 fields"),
    ("networks.conf", "garbage", 1, "expected vlan_id"),
    ("networks.conf", "2,198.51.100.128/25,198.51.100.129", 3, "overlaps"),
    ("networks.conf", "1,203.0.113.0/24,203.0.113.1", 1, "VLAN 1 is already used"),
    ("firewall.conf", "dney from 203.0.113.5 to tcp/22", 1, "did you mean deny"),
    ("firewall.conf", "deny form 203.0.113.5 to tcp/22", 6, "expected 'from' or 'to'"),
    ("firewall.conf", "deny from 203.0.113.5 to tpc/22", 26, "unknown protocol"),
    ("firewall.conf", "deny from 203.0.113.5 to tcp/0", 30, "out of range"),
    ("firewall.conf", "deny from 203.0.113.5 to tcp/70000", 30, "out of range"),
    ("firewall.conf", "deny from 203.0.113.5 to tcp/90:80", 30, "backwards"),
    ("firewall.conf", "deny from 203.0.113.5/24 to tcp/22", 11, "host bits set"),
    ("firewall.conf", "deny from 203.0.113.256 to tcp/22", 11, "not an IPv4"),
    ("firewall.conf", "deny from 203.0.113.5,,203.0.113.6 to tcp/22", 23, "empty address"),
    ("firewall.conf", "deny from 203.0.113.5 to", 25, "expected services"),
    ("firewall.conf", "deny from 203.0.113.5 to tcp/22 udp/53", 33, "unexpected 'udp/53'"),
    ("firewall.conf", "deny", 5, "expected 'from' or 'to'"),
    ("firewall.conf", "enable now", 8, "unexpected 'now'"),
    ("firewall.conf", "deny from 203.0.113.5 to all/80", 30, "takes no port"),
    ("firewall.conf", "deny from 203.0.113.5 to icmp/300", 31, "ICMP type"),
    ("firewall.conf", "deny from bad_name to tcp/22", 11, "invalid host name"),
    ("slaves.conf", "vsh-02:fast", 8, "unknown option"),
    ("slaves.conf", "vsh-02:noselect,noselect", 17, "given twice"),
    ("slaves.conf", "vsh-02:bwlimit=2097152m", 16, "too large"),
    ("firewall.conf", "allow from to tcp/80", 12, "found the keyword 'to'"),
    ("networks.conf", "2,203.0.113.0/24,203.0.113.1,ex.org,203.0.113.5,x", 49, "found 6"),
    ("vs-tools.conf", "MAIL_FROM=a b@c", 13, "unexpected text"),
    ("vs-tools.conf", 'MAIL_FROM="x;y"', 12, "not a mail address"),
    ("create.conf", "default_device=eth0", 1, "did you mean DEFAULT_DEVICE"),
    ("slaves.conf", "vsh-02:bwlimit=10g", 18, "ASCII digits"),
    ("slaves.conf", "vsh-02:bwlimit=", 16, "expected a bandwidth"),
    ("slaves.conf", "vsh 02", 5, "one entry per line"),
    ("slaves.conf", "vsh-01", 1, "already listed"),
    ("slaves.conf", "bad_host", 1, "invalid host name"),
    ("backup.conf", "web:warm", 5, "not hot or cold"),
    ("backup.conf", "-rf:hot", 1, "invalid guest name"),
    ("backup.conf", "../x:hot", 1, "invalid guest name"),
    ("backup.conf", "web", 1, "expected vserver:hot"),
    ("backup.conf", "web:cold", 1, "already listed"),
    ("create.conf", "DEFAULT_RSS_LIMIT=12O", 21, "ASCII digits"),
    ("create.conf", "DEFAULT_CPU_LIMIT=5/4", 19, "more than the whole host"),
    ("create.conf", "DEFAULT_CPU_LIMIT=1/0", 21, "out of range"),
    ("create.conf", "DEFAULT_DEVICE=averyveryverylongname", 16, "1-15 characters"),
    ("create.conf", "CONTEXT_METHOD=random", 16, "not one of"),
    ("create.conf", "DEFAULT_DEVICES=eth0", 1, "did you mean DEFAULT_DEVICE"),
    ("create.conf", "DEFAULT_VLAN=1", 1, "already set on line 1"),
    ("create.conf", "DEFAULT_DEVICE = eth0", 15, "no spaces around"),
    ("create.conf", "export MTU=1500", 1, "'export' is shell syntax"),
    ("create.conf", 'DEFAULT_DOMAIN="example.org', 16, "unterminated double quote"),
    ("create.conf", "DEFAULT_DOMAIN=a b", 18, "unexpected text"),
    ("create.conf", "MAIN_MIRROR=ftp.example.org", 13, "not an http"),
    ("monitor.conf", "MONITOR_POOLING=0", 17, "out of range"),
    ("monitor.conf", "RSS_THRESHOLD=101", 15, "out of range"),
    ("monitor.conf", "LOADAVG_1_THRESHOLD=1,5", 22, "decimal"),
    ("monitor.conf", "MONITOR_SOCKETS=maybe", 17, "yes or no"),
    ("monitor.conf", 'SOCKETS_FILTER="a(b"', 18, "regular expression"),
    ("monitor.conf", "MONITOR_MAILTO=a;b", 16, "not a mail address"),
    ("vs-tools.conf", "ROOT_DIR=relative/path", 10, "absolute path"),
    ("vs-tools.conf", "FIREWALL_BACKEND=pf", 18, "not one of"),
    ("vs-tools.conf", "SMTP_PORT=0", 11, "out of range"),
    ("guest.conf", "NAME=other", 1, "already set"),
    ("guest.conf", "USERNS=perhaps", 8, "yes or no"),
]


@pytest.mark.parametrize(
    ("kind", "broken", "col", "words"), CASES, ids=[f"{c[0]}:{c[1]}" for c in CASES]
)
def test_broken_line_is_reported_at_its_place_and_rejects_the_file(
    kind: str, broken: str, col: int, words: str
) -> None:
    good = GOOD[kind]
    text = good + broken + "\n" + AFTER.get(kind, "")
    line = len(good.splitlines()) + 1
    with pytest.raises(ConfigError) as caught:
        PARSERS[kind](f"/x/{kind}", text)
    problems = [p for p in caught.value.problems if p.severity is Severity.ERROR]
    assert [(p.line, p.col) for p in problems] == [(line, col)], caught.value.lines()
    assert words in problems[0].message
    assert str(problems[0]).startswith(f"/x/{kind}:{line}:{col}: ")


@pytest.mark.parametrize("kind", sorted(GOOD))
def test_the_good_text_of_each_case_is_valid(kind: str) -> None:
    PARSERS[kind](kind, GOOD[kind])


def test_every_problem_in_a_file_is_listed_not_only_the_first() -> None:
    text = "x,198.51.100.0/24,198.51.100.1\n2,203.0.113.1/24,203.0.113.1\n3,bad\n"
    with pytest.raises(ConfigError) as caught:
        parse_networks("n", text)
    assert [(p.line, p.col) for p in caught.value.problems] == [(1, 1), (2, 3), (3, 1)]


@pytest.mark.parametrize("port", ["٨٠", "８０", "8_0", "+80", "-80", "0x50", "²"])
def test_p3_lookalike_digits_are_not_ports(port: str) -> None:
    with pytest.raises(ConfigError):
        parse_firewall("f", f"allow from 0/0 to tcp/{port}\n")


@pytest.mark.parametrize("value", ["٨", "８", "1_0", "+1", "1e3", " 1"])
def test_p3_lookalike_digits_are_not_numbers_in_key_value_files(value: str) -> None:
    with pytest.raises(ConfigError):
        CreateConf.parse("c", f'DEFAULT_PROC_LIMIT="{value}"\n')


def test_p2_a_typo_in_a_deny_rule_is_never_dropped_silently() -> None:
    text = "enable\ndeny from 203.0.113.7 to tcp/22\ndeny fron 203.0.113.8 to tcp/22\n"
    with pytest.raises(ConfigError) as caught:
        parse_firewall("firewall.conf", text)
    assert [p.line for p in caught.value.problems] == [3]


@pytest.mark.parametrize("cidr", ["198.51.100.1/24", "203.0.113.128/16", "198.18.0.1/15"])
def test_p4_host_bits_in_a_cidr_are_an_error(cidr: str) -> None:
    with pytest.raises(ConfigError, match="host bits set"):
        parse_firewall("f", f"allow from {cidr} to tcp/22\n")


def test_port_side_missing_is_accepted_with_a_warning() -> None:
    conf = parse_firewall("f", "allow from 0/0 tcp/80\n")
    assert conf.rules[0].port_side.value == "either"
    assert [(w.line, w.col) for w in conf.warnings] == [(1, 16)]


@pytest.mark.parametrize("kind", sorted(FILE_KINDS))
def test_p6_command_substitution_is_text_never_run(kind: str, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    payloads = [f"$(touch {marker})", f"`touch {marker}`", f"; touch {marker}"]
    for payload in payloads:
        for text in _inject(kind, payload):
            with contextlib.suppress(ConfigError):
                PARSERS[kind](kind, text)
    assert not marker.exists()
    assert not os.path.exists("/tmp/x")


def _inject(kind: str, payload: str) -> list[str]:
    """Texts that put the payload in every place a value can stand in this kind of file."""
    if kind in ("create.conf", "monitor.conf", "vs-tools.conf", "guest.conf"):
        keys = [spec.key for spec in PARSERS_SCHEMAS[kind]]
        texts = [f'{key}="{payload}"\n' for key in keys]
        return texts + [f"{key}={payload}\n" for key in keys]
    return [
        payload + "\n",
        GOOD[kind].replace("203.0.113", payload, 1),
        GOOD[kind].rstrip("\n") + payload + "\n",
    ]


PARSERS_SCHEMAS = {
    "create.conf": CreateConf.SCHEMA,
    "monitor.conf": MonitorConf.SCHEMA,
    "vs-tools.conf": Settings.SCHEMA,
    "guest.conf": GuestConf.SCHEMA,
}


def test_not_utf8_and_nul_are_reported_at_their_place(tmp_path: Path) -> None:
    from vstools.config.lexer import read_config

    bad = tmp_path / "networks.conf"
    bad.write_bytes(b"1,198.51.100.0/24,198.51.100.1\n2,\xff\n")
    with pytest.raises(ConfigError) as caught:
        read_config(bad)
    assert (caught.value.problems[0].line, caught.value.problems[0].col) == (2, 3)
    bad.write_bytes(b"ab\0c\n")
    with pytest.raises(ConfigError) as caught:
        read_config(bad)
    assert (caught.value.problems[0].line, caught.value.problems[0].col) == (1, 3)


def test_control_characters_are_rejected() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_firewall("f", "allow from 0/0 to tcp/22\x1b[2K\n")
    assert caught.value.problems[0].col == 25


def test_colon_form_with_comma_separated_nameservers() -> None:
    conf = parse_networks("n", "4:198.51.100.0/24:198.51.100.1:203.0.113.5,203.0.113.6:ex.org\n")
    assert [str(ns) for ns in conf.networks[0].nameservers] == ["203.0.113.5", "203.0.113.6"]
    assert conf.networks[0].domain == "ex.org"


def test_smtp_host_may_be_an_address() -> None:
    assert Settings.parse("s", "SMTP_HOST=198.51.100.25\n").smtp_host == "198.51.100.25"


GUEST_BASE = "NAME=web\nCONTEXT=5\nIP=198.51.100.10\nRSS_LIMIT=1\nDISK_LIMIT=1\nTMPFS_LIMIT=1\n"
GUEST_BASE += "PROC_LIMIT=1\nCPU_LIMIT=1/2\n"


def test_lvm_storage_needs_its_volume_group_and_a_valid_name() -> None:
    with pytest.raises(ConfigError) as missing:
        GuestConf.parse("guest.conf", GUEST_BASE + "STORAGE=lvm\n")
    assert [str(p) for p in missing.value.problems] == ["guest.conf:9:1: STORAGE=lvm needs LVM_VG"]
    with pytest.raises(ConfigError) as bad:
        CreateConf.parse("create.conf", "STORAGE=lvm\nLVM_VG=-vg\n")
    problem = str(bad.value.problems[0])
    assert problem.startswith("create.conf:2:8: LVM_VG: '-vg' is not a volume group")
    conf = GuestConf.parse("guest.conf", GUEST_BASE + "STORAGE=lvm\nLVM_VG=vg0\nLVM_FS=xfs\n")
    assert (conf.lvm_vg, conf.lvm_fs) == ("vg0", "xfs")
