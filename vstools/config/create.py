"""create.conf: the defaults ``vs-create`` applies (networks.conf wins where both speak)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from ipaddress import IPv4Address
from typing import ClassVar

from vstools.config.keyvalue import Field, KeyValueFile, meta_fields
from vstools.config.lexer import Collector
from vstools.config.values import (
    CpuRatio,
    StorageKind,
    _enum,
    _fs,
    _vg_name,
    mb,
    memory_mb,
    parse_abs_path,
    parse_bool,
    parse_command,
    parse_cpu_ratio,
    parse_hostname,
    parse_ifname,
    parse_ipv4_list,
    parse_uint,
    parse_url,
    parse_word,
    processes,
)
from vstools.errors import Problem


class ContextMethod(StrEnum):
    """How vs-create numbers a new guest's context (CONTEXT_METHOD)."""

    DEC = "dec"  # 1000 * vlan + last octet of the address
    HEX = "hex"  # the address's last two octets as a 16-bit number
    CNT = "cnt"  # a counter kept on the host, starting at CONTEXT_START


class CreateMethod(StrEnum):
    """How vs-create builds a new guest: from a template, with debootstrap or as a clone."""

    TEMPLATE = "template"
    DEBOOTSTRAP = "debootstrap"
    CLONE = "clone"


def _context_start(text: str) -> int:
    return parse_uint(text, minimum=1, maximum=2**31 - 1, what="context number")


def _mtu(text: str) -> int:
    return parse_uint(text, minimum=68, maximum=65535, what="MTU")


def _prefix(text: str) -> int:
    return parse_uint(text, maximum=32, what="prefix length")


def _vlan(text: str) -> int:
    return parse_uint(text, maximum=4094, what="VLAN id")


_PATH, _LINES, _PROBLEMS = meta_fields()


@dataclass(frozen=True, kw_only=True)
class CreateConf(KeyValueFile):
    """create.conf's model: the defaults vs-create applies to a new guest."""

    FILE_NAME: ClassVar[str] = "create.conf"

    device: str = "eth0"
    mtu: int | None = None
    domain: str | None = None
    nameservers: tuple[IPv4Address, ...] = ()
    prefix: int = 24
    vlan: int = 0
    disk_limit_mb: int = 1024
    rss_limit_mb: int = 128
    tmpfs_limit_mb: int = 16
    proc_limit: int = 150
    cpu_limit: CpuRatio = CpuRatio(9, 10)  # noqa: RUF009 - frozen, so sharing it is safe
    fake_os: str | None = None
    context_method: ContextMethod = ContextMethod.CNT
    context_start: int = 10000
    method: CreateMethod = CreateMethod.TEMPLATE
    template: str | None = None
    distro: str = "bookworm"
    main_mirror: str = "http://deb.debian.org/debian"
    update_mirror: str | None = None
    storage: StorageKind = StorageKind.DIR
    lvm_vg: str | None = None
    lvm_fs: str = "ext4"
    snapshot_size_mb: int = 1024
    userns: bool = True  # unprivileged by default, as Proxmox and Incus (docs/security.md)
    init: str = "/sbin/init"
    path: str = _PATH
    key_lines: tuple[tuple[str, int, int], ...] = _LINES
    warnings: tuple[Problem, ...] = _PROBLEMS

    SCHEMA: ClassVar[tuple[Field, ...]] = (
        Field("DEFAULT_DEVICE", "device", parse_ifname, doc="uplink interface"),
        Field("MTU", "mtu", _mtu, doc="MTU of VLAN uplinks created on demand"),
        Field("DEFAULT_DOMAIN", "domain", parse_hostname),
        Field("DEFAULT_NAMESERVER", "nameservers", parse_ipv4_list),
        Field("DEFAULT_PREFIX", "prefix", _prefix),
        Field("DEFAULT_VLAN", "vlan", _vlan),
        Field("DEFAULT_DISK_LIMIT", "disk_limit_mb", mb),
        Field("DEFAULT_RSS_LIMIT", "rss_limit_mb", memory_mb),
        Field("DEFAULT_TMPFS_LIMIT", "tmpfs_limit_mb", memory_mb),
        Field("DEFAULT_PROC_LIMIT", "proc_limit", processes),
        Field("DEFAULT_CPU_LIMIT", "cpu_limit", parse_cpu_ratio),
        Field(
            "FAKE_OS",
            "fake_os",
            parse_word,
            warning="ignored: namespaces cannot show a guest another kernel version",
        ),
        Field("CONTEXT_METHOD", "context_method", _enum(ContextMethod)),
        Field("CONTEXT_START", "context_start", _context_start),
        Field("DEFAULT_METHOD", "method", _enum(CreateMethod)),
        Field("DEFAULT_TEMPLATE", "template", parse_abs_path),
        Field("DEFAULT_DISTRO", "distro", parse_word),
        Field("MAIN_MIRROR", "main_mirror", parse_url),
        Field("UPDATE_MIRROR", "update_mirror", parse_url),
        Field("STORAGE", "storage", _enum(StorageKind)),
        Field("LVM_VG", "lvm_vg", _vg_name),
        Field("LVM_FS", "lvm_fs", _fs),
        Field("SNAPSHOT_SIZE", "snapshot_size_mb", mb),
        Field("DEFAULT_USERNS", "userns", parse_bool),
        Field("DEFAULT_INIT", "init", parse_command),
    )

    def cross_check(self, out: Collector) -> None:
        """Refuse STORAGE=lvm without LVM_VG, and DEFAULT_METHOD=clone (--clone names a source)."""
        if self.storage is StorageKind.LVM and self.lvm_vg is None:
            out.error(self.line_of("STORAGE") or 0, 1, "STORAGE=lvm needs LVM_VG")
        if self.method is CreateMethod.CLONE:
            out.error(
                self.line_of("DEFAULT_METHOD") or 0,
                1,
                "DEFAULT_METHOD=clone cannot be a default: --clone names its source guest",
            )
