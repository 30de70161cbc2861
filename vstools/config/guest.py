"""guest.conf: everything needed to run one guest, written by ``vs-create`` and ``vs-limit``."""

from __future__ import annotations

from dataclasses import dataclass
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
    parse_bool,
    parse_command,
    parse_cpu_ratio,
    parse_guest_name,
    parse_hostname,
    parse_ipv4,
    parse_ipv4_list,
    parse_uint,
    processes,
)
from vstools.errors import Problem

MAX_CONTEXT = 2**31 - 1
# With USERNS=yes a guest's uids and gids 0..65535 are the host's CONTEXT * 65536 onwards: the
# 65536 ids a Debian system uses (nobody is 65534), in a range no other guest shares. Ids stay
# below 2**31, the range every tool reads right (systemd calls the rest unsafe; the kernel's
# ping_group_range stops there), which leaves room for contexts up to 32767.
USERNS_SIZE = 65536
MAX_USERNS_CONTEXT = (2**31 - USERNS_SIZE) // USERNS_SIZE


def parse_context(text: str) -> int:
    """A context number, 1 to 2**31 - 1."""
    # Context numbers name host objects; `dec` gives up to 1000 * 4094 + 255.
    return parse_uint(text, minimum=1, maximum=MAX_CONTEXT, what="context number")


def userns_base(context: int) -> int:
    """The first host id of the guest's user namespace; ValueError when the context is too
    large for a map of its own."""
    if not 1 <= context <= MAX_USERNS_CONTEXT:
        raise ValueError(
            f"USERNS=yes needs a context number up to {MAX_USERNS_CONTEXT} (its ids are"
            f" CONTEXT * {USERNS_SIZE} onwards); context {context} is too large: choose one with"
            " vs-create --context, or CONTEXT_METHOD=cnt or hex"
        )
    return context * USERNS_SIZE


_PATH, _LINES, _PROBLEMS = meta_fields()


@dataclass(frozen=True, kw_only=True)
class GuestConf(KeyValueFile):
    """guest.conf's model: one guest's name, context, address, limits and storage."""

    FILE_NAME: ClassVar[str] = "guest.conf"

    name: str
    context: int
    ip: IPv4Address
    hostname: str | None = None
    domain: str | None = None
    nameservers: tuple[IPv4Address, ...] = ()
    rss_limit_mb: int
    disk_limit_mb: int
    tmpfs_limit_mb: int
    proc_limit: int
    cpu_limit: CpuRatio
    enabled: bool = False
    storage: StorageKind = StorageKind.DIR
    lvm_vg: str | None = None
    lvm_fs: str = "ext4"
    init: str = "/sbin/init"
    userns: bool = False
    path: str = _PATH
    key_lines: tuple[tuple[str, int, int], ...] = _LINES
    warnings: tuple[Problem, ...] = _PROBLEMS

    SCHEMA: ClassVar[tuple[Field, ...]] = (
        Field("NAME", "name", parse_guest_name),
        Field("CONTEXT", "context", parse_context),
        Field("IP", "ip", parse_ipv4),
        Field("HOSTNAME", "hostname", parse_hostname),
        Field("DOMAIN", "domain", parse_hostname),
        Field("NAMESERVER", "nameservers", parse_ipv4_list),
        Field("RSS_LIMIT", "rss_limit_mb", memory_mb),
        Field("DISK_LIMIT", "disk_limit_mb", mb),
        Field("TMPFS_LIMIT", "tmpfs_limit_mb", memory_mb),
        Field("PROC_LIMIT", "proc_limit", processes),
        Field("CPU_LIMIT", "cpu_limit", parse_cpu_ratio),
        Field("ENABLED", "enabled", parse_bool),
        Field("STORAGE", "storage", _enum(StorageKind)),
        Field("LVM_VG", "lvm_vg", _vg_name, doc="volume group of the guest's logical volume"),
        Field("LVM_FS", "lvm_fs", _fs, doc="file system on the guest's logical volume"),
        Field("INIT", "init", parse_command, doc="the guest's first program and its arguments"),
        Field("USERNS", "userns", parse_bool, doc="run the guest in a user namespace of its own"),
    )

    def cross_check(self, out: Collector) -> None:
        """Refuse STORAGE=lvm without LVM_VG, and USERNS=yes with a context too large for its
        own id map."""
        if self.storage is StorageKind.LVM and self.lvm_vg is None:
            out.error(self.line_of("STORAGE") or 0, 1, "STORAGE=lvm needs LVM_VG")
        if self.userns:
            try:
                userns_base(self.context)
            except ValueError as exc:
                out.error(self.line_of("USERNS") or 0, 1, str(exc))
