"""Parsers for single values. Each takes the value's text and returns a typed value or raises
ValueProblem with the offset of the offending character, so callers can report its column.

Numbers are ASCII digits only: ``int()`` would accept ``٨٠``, ``８０``, ``8_0`` and ``+80``
(catalogue P3), so every integer goes through ``parse_uint``.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from enum import StrEnum
from fractions import Fraction
from functools import partial

from vstools.config.lexer import ValueProblem
from vstools.names import guest_name_problem, hostname_problem

_DIGITS = re.compile(r"[0-9]+", re.ASCII)
_DECIMAL = re.compile(r"[0-9]+(?:\.[0-9]+)?", re.ASCII)
_IPV4 = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}", re.ASCII)
_DOTTED = re.compile(r"[0-9.]+", re.ASCII)


def _first_bad(text: str, allowed: str) -> int:
    for index, char in enumerate(text):
        if char not in allowed:
            return index
    return 0


def parse_uint(
    text: str, *, minimum: int = 0, maximum: int | None = None, what: str = "number"
) -> int:
    """A non-negative decimal integer written with ASCII digits only."""
    if not text:
        raise ValueProblem(f"expected a {what}, got nothing")
    if not _DIGITS.fullmatch(text):
        bad = _first_bad(text, "0123456789")
        raise ValueProblem(f"{what} {text!r} must be ASCII digits only", bad)
    value = int(text)
    if value < minimum or (maximum is not None and value > maximum):
        bounds = f"{minimum}..{maximum}" if maximum is not None else f">= {minimum}"
        raise ValueProblem(f"{what} {value} out of range ({bounds})")
    return value


def parse_decimal(text: str, *, what: str = "number") -> float:
    """A non-negative decimal like ``2`` or ``1.5`` (ASCII digits, one optional point)."""
    if not _DECIMAL.fullmatch(text):
        raise ValueProblem(
            f"{what} {text!r} must be a decimal like 2 or 1.5", _first_bad(text, "0123456789.")
        )
    return float(text)


def parse_bool(text: str) -> bool:
    """``yes``, ``true``, ``on``, ``1`` or ``no``, ``false``, ``off``, ``0``, in any case."""
    lowered = text.lower()
    if lowered in ("yes", "true", "on", "1"):
        return True
    if lowered in ("no", "false", "off", "0"):
        return False
    raise ValueProblem(f"expected yes or no, got {text!r}")


def parse_ipv4(text: str) -> ipaddress.IPv4Address:
    """A dotted-quad IPv4 address (no leading zeros, no shortened forms)."""
    if not _IPV4.fullmatch(text):
        raise ValueProblem(f"{text!r} is not an IPv4 address", _first_bad(text, "0123456789."))
    try:
        return ipaddress.IPv4Address(text)
    except ValueError as exc:
        raise ValueProblem(f"{text!r} is not an IPv4 address: {exc}") from None


def parse_ipv4_network(text: str, *, allow_bare: bool = True) -> ipaddress.IPv4Network:
    """``a.b.c.d/prefix``, ``0/0``, or (``allow_bare``) a single address as a /32.

    Host bits set (``10.0.1.5/24``) are an error, not silently masked (catalogue P4)."""
    if text == "0/0":
        return ipaddress.IPv4Network("0.0.0.0/0")
    address, slash, prefix_text = text.partition("/")
    base = parse_ipv4(address)
    if not slash:
        if not allow_bare:
            raise ValueProblem(f"{text!r} needs a /prefix", len(text))
        return ipaddress.IPv4Network(base)
    try:
        prefix = parse_uint(prefix_text, maximum=32, what="prefix length")
    except ValueProblem as exc:
        raise ValueProblem(exc.message, len(address) + 1 + exc.offset) from None
    network = ipaddress.IPv4Network((base, prefix), strict=False)
    if network.network_address != base:
        raise ValueProblem(
            f"host bits set in {text} (the network is {network.network_address}/{prefix})"
        )
    return network


def looks_like_ipv4(text: str) -> bool:
    """True for anything made of digits, dots and at most one slash: such a token is meant as an
    address and must parse as one, never fall through to being a host name."""
    return bool(_DOTTED.fullmatch(text.split("/", 1)[0])) and text not in ("", ".")


def parse_hostname(text: str) -> str:
    """A DNS host name, returned in lower case without its trailing dot."""
    problem = hostname_problem(text)
    if problem is not None:
        raise ValueProblem(problem)
    return text.rstrip(".").lower()


def parse_host(text: str) -> str:
    """A host given by name or by IPv4 address."""
    return str(parse_ipv4(text)) if looks_like_ipv4(text) else parse_hostname(text)


def parse_guest_name(text: str) -> str:
    """A valid guest name, returned unchanged."""
    problem = guest_name_problem(text)
    if problem is not None:
        raise ValueProblem(problem)
    return text


@dataclass(frozen=True, slots=True)
class CpuRatio:
    """``a/b`` of the host's whole CPU capacity (``9/10`` = 90% of all CPUs together)."""

    numerator: int
    denominator: int

    @property
    def fraction(self) -> Fraction:
        """The ratio as an exact Fraction."""
        return Fraction(self.numerator, self.denominator)

    def __str__(self) -> str:
        return f"{self.numerator}/{self.denominator}"


def parse_cpu_ratio(text: str) -> CpuRatio:
    """``a/b`` with 1 <= a <= b: a share of the host, never more than all of it."""
    top, slash, bottom = text.partition("/")
    if not slash:
        raise ValueProblem(f"cpu limit {text!r} must be a ratio a/b such as 1/4", len(text))
    numerator = parse_uint(top, minimum=1, what="cpu ratio numerator")
    try:
        denominator = parse_uint(bottom, minimum=1, what="cpu ratio denominator")
    except ValueProblem as exc:
        raise ValueProblem(exc.message, len(top) + 1 + exc.offset) from None
    if numerator > denominator:
        raise ValueProblem(f"cpu limit {text} is more than the whole host (a/b needs a <= b)")
    return CpuRatio(numerator, denominator)


_IFNAME_BAD = set("/ :\t\n")


def parse_ifname(text: str) -> str:
    """A Linux interface name: 1-15 bytes, no '/', ':' or whitespace (IFNAMSIZ is 16)."""
    if not 1 <= len(text.encode()) <= 15 or text in (".", ".."):
        raise ValueProblem(f"interface name {text!r} must be 1-15 characters")
    for index, char in enumerate(text):
        if char in _IFNAME_BAD or not char.isascii() or not char.isprintable():
            raise ValueProblem(f"interface name {text!r} has a forbidden character", index)
    return text


def parse_url(text: str) -> str:
    """An http(s), ftp or file URL, without blanks, quotes, backquotes, ``$`` or backslashes."""
    if not re.fullmatch(r"(?:https?|ftp|file)://[^\s\"'`$\\]+", text, re.ASCII):
        raise ValueProblem(f"{text!r} is not an http(s), ftp or file URL")
    return text


def parse_abs_path(text: str) -> str:
    """An absolute path, without NUL or newline characters."""
    if not text.startswith("/"):
        raise ValueProblem(f"{text!r} must be an absolute path")
    if "\0" in text or "\n" in text:
        raise ValueProblem("a path cannot hold NUL or newline characters")
    return text


def parse_command(text: str) -> str:
    """An absolute program path, optionally followed by arguments (split on blanks)."""
    words = text.split()
    if not words:
        raise ValueProblem("expected a program path")
    parse_abs_path(words[0])
    return " ".join(words)


def parse_word(text: str) -> str:
    """A simple identifier such as a Debian suite name (``bookworm``)."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", text, re.ASCII):
        raise ValueProblem(f"{text!r} must be letters, digits, '.', '_' or '-'")
    return text


def parse_regex(text: str) -> str:
    """A regular expression that Python's ``re`` compiles, returned unchanged."""
    try:
        re.compile(text)
    except re.error as exc:
        raise ValueProblem(f"invalid regular expression: {exc.msg}", exc.pos or 0) from None
    return text


def parse_ipv4_list(text: str) -> tuple[ipaddress.IPv4Address, ...]:
    """Space- (or comma-) separated IPv4 addresses, as the slides' nameserver lists."""
    found: list[ipaddress.IPv4Address] = []
    for match in re.finditer(r"[^\s,]+", text):
        try:
            found.append(parse_ipv4(match.group()))
        except ValueProblem as exc:
            raise ValueProblem(exc.message, match.start() + exc.offset) from None
    return tuple(found)


_MAIL = re.compile(r"[A-Za-z0-9._%+-]+(?:@[A-Za-z0-9.-]+)?", re.ASCII)


def parse_mail(text: str) -> str:
    """One mail address (``user@domain``) or a bare local name (``root``)."""
    if not _MAIL.fullmatch(text):
        raise ValueProblem(f"{text!r} is not a mail address")
    return text


def parse_mail_list(text: str) -> tuple[str, ...]:
    """Comma- or space-separated mail addresses; a bare local name (``root``) is allowed."""
    found: list[str] = []
    for match in re.finditer(r"[^\s,]+", text):
        if not _MAIL.fullmatch(match.group()):
            raise ValueProblem(f"{match.group()!r} is not a mail address", match.start())
        found.append(match.group())
    if not found:
        raise ValueProblem("expected at least one mail address")
    return tuple(found)


# -- sizes, counts and kinds several files share (guest.conf, create.conf, vs-tools.conf) -----
# Here rather than in vstools.config.create: reading guest.conf (vs-control --all) then does
# not build create.conf's model (issue 17).


class StorageKind(StrEnum):
    """What holds a guest's root filesystem: a directory, a btrfs subvolume or a logical volume."""

    DIR = "dir"
    BTRFS = "btrfs"
    LVM = "lvm"


def _enum(kind: type[StrEnum]) -> partial[StrEnum]:
    return partial(_parse_enum, kind)


def _parse_enum(kind: type[StrEnum], text: str) -> StrEnum:
    try:
        return kind(text)
    except ValueError:
        choices = ", ".join(m.value for m in kind)
        raise ValueProblem(f"{text!r} is not one of {choices}") from None


# Bounds that keep every value inside what the kernel takes as given (catalogue A8): a memory
# limit in bytes must stay below the v1 page counter's 2**63 (a larger one wrapped), and no
# host has 16 TiB for one guest's memory or /tmp; disks to 1 PiB; the kernel's pids.max
# stops at PID_MAX_LIMIT (2**22).
MAX_MEMORY_MB = 1 << 24
MAX_DISK_MB = 1 << 30
MAX_PROCESSES = 1 << 22


def mb(text: str) -> int:
    """A disk size in MB."""
    return parse_uint(text, minimum=1, maximum=MAX_DISK_MB, what="size in MB")


def memory_mb(text: str) -> int:
    """A memory (or tmpfs) size in MB."""
    return parse_uint(text, minimum=1, maximum=MAX_MEMORY_MB, what="size in MB")


def processes(text: str) -> int:
    """A process limit: 1 to 2**22 (the kernel's PID_MAX_LIMIT)."""
    return parse_uint(text, minimum=1, maximum=MAX_PROCESSES, what="process count")


def count(text: str) -> int:
    """A count of at least 1, with no upper bound."""
    return parse_uint(text, minimum=1, what="count")


def _fs(text: str) -> str:
    if text not in ("ext4", "xfs"):
        raise ValueProblem(f"{text!r} is not ext4 or xfs")
    return text


def _vg_name(text: str) -> str:
    # lvm(8): VG and LV names are letters, digits and "+_.-", not starting with "-", at most
    # 127 characters; "." and ".." are refused by the first character.
    if not re.fullmatch(r"[A-Za-z0-9+_][A-Za-z0-9+_.-]{0,126}", text, re.ASCII):
        raise ValueProblem(
            f"{text!r} is not a volume group name (letters, digits, '+_.-', at most 127)"
        )
    return text
