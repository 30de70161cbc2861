"""vs-tools.conf: the host's paths and global switches."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from ipaddress import IPv4Address
from typing import ClassVar

from vstools.config.keyvalue import Field, KeyValueFile, meta_fields
from vstools.config.lexer import ValueProblem
from vstools.config.values import (
    _enum,
    count,
    parse_abs_path,
    parse_bool,
    parse_host,
    parse_hostname,
    parse_mail,
    parse_mail_list,
    parse_uint,
)
from vstools.errors import Problem


class NetworkMode(StrEnum):
    """NETWORK: whether guests get their routed network or a loopback only."""

    ROUTED = "routed"  # DESIGN §6: each guest routed on its network, behind the host's firewall
    NONE = "none"  # loopback only: the host's network is never touched


class FirewallBackend(StrEnum):
    """FIREWALL_BACKEND: which tool loads the host's firewall rules."""

    NFTABLES = "nftables"
    IPTABLES_RESTORE = "iptables-restore"
    IPTC = "iptc"  # python-iptables, legacy iptables hosts only


class PkgCache(StrEnum):
    """PKG_CACHE: which proxy vs-pkg starts for apt guests (dnf and apk guests: tinyproxy)."""

    NONE = "none"  # tinyproxy: nothing kept between runs
    APT_CACHER_NG = "apt-cacher-ng"  # Debian's caching proxy: one cache all runs share


def _port(text: str) -> int:
    return parse_uint(text, minimum=1, maximum=65535, what="port")


def _seconds(text: str) -> int:
    return parse_uint(text, minimum=1, what="number of seconds")


def _cgroup_parent(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9._@-]+(/[A-Za-z0-9._@-]+)*", text, re.ASCII) or any(
        part in (".", "..") for part in text.split("/")
    ):
        raise ValueProblem(f"{text!r} must be a relative cgroup path of letters, digits and ._@-")
    return text


def _link_local(text: str) -> IPv4Address:
    # Link-local (169.254.0.0/16) is never routed off a link: the proxy's address is reachable
    # only from the guest's veth, and cannot collide with a real host or guest address.
    try:
        address = IPv4Address(text)
    except ValueError:
        raise ValueProblem(f"{text!r} is not an IPv4 address") from None
    if not address.is_link_local:
        raise ValueProblem(f"{text} is not a link-local address (169.254.0.0/16)")
    return address


DEFAULT_PKG_PROXY = IPv4Address("169.254.80.1")
_PATH, _LINES, _PROBLEMS = meta_fields()


def _textfile_dir(text: str) -> str | None:
    return None if text == "none" else parse_abs_path(text)


DEFAULT_TEXTFILE_DIR = "/var/lib/prometheus/node-exporter"  # Debian's prometheus-node-exporter


def _keep(text: str) -> int:
    return parse_uint(text, minimum=0, maximum=100_000, what="number of archives")


def _hours(text: str) -> int:
    return parse_uint(text, minimum=1, what="number of hours")


def _ssh_timeout(text: str) -> int:
    return parse_uint(text, minimum=1, maximum=600, what="timeout in seconds")


def _call_timeout(text: str) -> int:
    return parse_uint(text, minimum=1, maximum=86400, what="timeout in seconds")


@dataclass(frozen=True, kw_only=True)
class Settings(KeyValueFile):
    """vs-tools.conf's model: the host's paths and global switches."""

    FILE_NAME: ClassVar[str] = "vs-tools.conf"

    guests_conf_dir: str | None = None
    root_dir: str | None = None
    state_dir: str | None = None
    run_dir: str | None = None
    hostname: str | None = None
    network: NetworkMode = NetworkMode.ROUTED
    firewall_backend: FirewallBackend = FirewallBackend.NFTABLES
    smtp_host: str = "localhost"
    smtp_port: int = 25
    mail_from: str | None = None
    syslog: bool = True
    syslog_socket: str = "/dev/log"
    stop_timeout_s: int = 30
    ssh_key: str | None = None
    ssh_known_hosts: str | None = None
    ssh_timeout_s: int = 10
    ssh_call_timeout_s: int = 120
    ssh_authorized_keys: str = "/root/.ssh/authorized_keys"
    backup_dir: str | None = None
    backup_keep: int = 7
    backup_keep_last: int | None = None  # unset: BACKUP_KEEP
    backup_keep_daily: int = 0
    backup_keep_weekly: int = 0
    backup_keep_monthly: int = 0
    backup_keep_yearly: int = 0
    backup_passphrase_file: str = "/etc/vs-tools/backup.passphrase"  # noqa: S105 - a path
    backup_master: str | None = None  # how slaves reach the master (default: its HOSTNAME)
    backup_host_key: str = "/etc/ssh/ssh_host_ed25519_key.pub"
    backup_ssh_key: str = "/etc/vs-tools/backup_key"
    backup_max_age_h: int = 36
    backup_mailto: tuple[str, ...] = ("root",)
    cgroup_parent: str = "vs-tools"
    prometheus_textfile_dir: str | None = DEFAULT_TEXTFILE_DIR
    pkg_proxy_address: IPv4Address = DEFAULT_PKG_PROXY
    pkg_timeout_s: int = 1800
    pkg_cache: PkgCache = PkgCache.NONE
    path: str = _PATH
    key_lines: tuple[tuple[str, int, int], ...] = _LINES
    warnings: tuple[Problem, ...] = _PROBLEMS

    SCHEMA: ClassVar[tuple[Field, ...]] = (
        Field(
            "GUESTS_CONF_DIR",
            "guests_conf_dir",
            parse_abs_path,
            doc="one directory per guest: guest.conf, firewall.conf, monitor.conf",
        ),
        Field("ROOT_DIR", "root_dir", parse_abs_path, doc="the guests' root filesystems"),
        Field("STATE_DIR", "state_dir", parse_abs_path, doc="monitor state, mail spool, inventory"),
        Field("RUN_DIR", "run_dir", parse_abs_path, doc="runtime state: supervisors, locks"),
        Field("HOSTNAME", "hostname", parse_hostname, doc="this host's name in outputs"),
        Field(
            "NETWORK",
            "network",
            _enum(NetworkMode),
            doc="routed: guests get their network when they start; none: loopback only",
        ),
        Field("FIREWALL_BACKEND", "firewall_backend", _enum(FirewallBackend)),
        Field("SMTP_HOST", "smtp_host", parse_host),
        Field("SMTP_PORT", "smtp_port", _port),
        Field("MAIL_FROM", "mail_from", parse_mail),
        Field("SYSLOG", "syslog", parse_bool),
        Field("SYSLOG_SOCKET", "syslog_socket", parse_abs_path),
        Field("STOP_TIMEOUT", "stop_timeout_s", _seconds),
        Field("SSH_KEY", "ssh_key", parse_abs_path),
        Field("SSH_KNOWN_HOSTS", "ssh_known_hosts", parse_abs_path),
        Field(
            "SSH_TIMEOUT",
            "ssh_timeout_s",
            _ssh_timeout,
            doc="seconds to reach a slave before it counts as unreachable",
        ),
        Field(
            "SSH_CALL_TIMEOUT",
            "ssh_call_timeout_s",
            _call_timeout,
            doc="seconds a slave may take to answer one step (not a copy, which is not bounded)",
        ),
        Field(
            "SSH_AUTHORIZED_KEYS",
            "ssh_authorized_keys",
            parse_abs_path,
            doc="on a slave: the sshd authorized_keys file a move's one-time key is added to",
        ),
        Field("BACKUP_DIR", "backup_dir", parse_abs_path),
        Field("BACKUP_KEEP", "backup_keep", count, doc="archives kept per guest (keep-last)"),
        Field("BACKUP_KEEP_LAST", "backup_keep_last", _keep, doc="overrides BACKUP_KEEP"),
        Field("BACKUP_KEEP_DAILY", "backup_keep_daily", _keep),
        Field("BACKUP_KEEP_WEEKLY", "backup_keep_weekly", _keep),
        Field("BACKUP_KEEP_MONTHLY", "backup_keep_monthly", _keep),
        Field("BACKUP_KEEP_YEARLY", "backup_keep_yearly", _keep),
        Field(
            "BACKUP_PASSPHRASE_FILE",
            "backup_passphrase_file",
            parse_abs_path,
            doc="the repository's passphrase, in a file readable by root only",
        ),
        Field("BACKUP_MASTER", "backup_master", parse_host, doc="the master as slaves reach it"),
        Field("BACKUP_HOST_KEY", "backup_host_key", parse_abs_path, doc="the master's host key"),
        Field(
            "BACKUP_SSH_KEY", "backup_ssh_key", parse_abs_path, doc="a slave's key to the master"
        ),
        Field("BACKUP_MAX_AGE", "backup_max_age_h", _hours, doc="hours before a backup is overdue"),
        Field("BACKUP_MAILTO", "backup_mailto", parse_mail_list, doc="who gets backup alerts"),
        Field(
            "CGROUP_PARENT",
            "cgroup_parent",
            _cgroup_parent,
            doc="the cgroup under which every guest's cgroup is made",
        ),
        Field(
            "PROMETHEUS_TEXTFILE_DIR",
            "prometheus_textfile_dir",
            _textfile_dir,
            doc="where vs-monitor writes vs_tools.prom for node_exporter (if it exists); none: off",
        ),
        Field(
            "PKG_PROXY_ADDRESS",
            "pkg_proxy_address",
            _link_local,
            doc="vs-pkg's proxy: a link-local address on the host's loopback during a run",
        ),
        Field(
            "PKG_TIMEOUT",
            "pkg_timeout_s",
            _seconds,
            doc="longest vs-pkg run; its firewall element expires after it",
        ),
        Field(
            "PKG_CACHE",
            "pkg_cache",
            _enum(PkgCache),
            doc="none: tinyproxy, no cache; apt-cacher-ng: apt guests share one package cache",
        ),
    )
