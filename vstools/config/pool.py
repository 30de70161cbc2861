"""The master's files: slaves.conf (the hosts of the pool) and backup.conf (what to back up)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import ClassVar

from vstools.config.lexer import (
    Collector,
    SourceRef,
    Token,
    ValueProblem,
    check_ascii_printable,
    iter_lines,
    parse_token,
    split_on,
    split_words,
    strip_comment,
)
from vstools.config.values import parse_guest_name, parse_host
from vstools.config.values import parse_uint as _uint
from vstools.errors import Problem


@dataclass(frozen=True, slots=True)
class Slave:
    """One host of slaves.conf and its options (``bwlimit_kib`` in KiB/s, None: no limit)."""

    host: str
    noselect: bool = False  # never chosen by placement, still scanned and reachable
    compress: bool = False  # rsync -z
    bwlimit_kib: int | None = None  # rsync --bwlimit, in KiB/s
    source: SourceRef = field(default=SourceRef("", 0), compare=False)

    def __str__(self) -> str:
        options = [
            name for name, on in (("noselect", self.noselect), ("compress", self.compress)) if on
        ]
        if self.bwlimit_kib is not None:
            options.append(f"bwlimit={_render_bw(self.bwlimit_kib)}")
        return self.host + (":" + ",".join(options) if options else "")


@dataclass(frozen=True, slots=True)
class SlavesConf:
    """slaves.conf's model: the pool's hosts in file order, each listed once."""

    FILE_NAME: ClassVar[str] = "slaves.conf"

    slaves: tuple[Slave, ...]
    path: str = field(default="", compare=False)
    warnings: tuple[Problem, ...] = field(default=(), compare=False)


class BackupMode(StrEnum):
    """How a guest is backed up: hot (a snapshot while it runs) or cold (stopped for the copy)."""

    HOT = "hot"  # snapshot while the guest runs
    COLD = "cold"  # stop, copy, start again


@dataclass(frozen=True, slots=True)
class BackupEntry:
    """One line of backup.conf: a guest and how it is backed up."""

    name: str
    mode: BackupMode
    source: SourceRef = field(default=SourceRef("", 0), compare=False)


@dataclass(frozen=True, slots=True)
class BackupConf:
    """backup.conf's model: the guests to back up in file order, each listed once."""

    FILE_NAME: ClassVar[str] = "backup.conf"

    entries: tuple[BackupEntry, ...]
    path: str = field(default="", compare=False)
    warnings: tuple[Problem, ...] = field(default=(), compare=False)


def _render_bw(kib: int) -> str:
    return f"{kib // 1024}m" if kib % 1024 == 0 else f"{kib}k"


def parse_bwlimit(text: str) -> int:
    """``<n>[k|m]`` in KiB/s (rsync's unit): ``512k`` = 512, ``10m`` = 10240, ``300`` = 300."""
    digits, unit = (text[:-1], text[-1].lower()) if text[-1:].lower() in ("k", "m") else (text, "k")
    value = _uint(digits, minimum=1, what="bandwidth") * (1024 if unit == "m" else 1)
    if value > 2**31 - 1:  # rsync keeps --bwlimit in a signed 32-bit count of KiB/s
        raise ValueProblem(f"bandwidth {text} is too large")
    return value


def _single_token(line: str, number: int, out: Collector) -> Token | None:
    words = split_words(strip_comment(line))
    if not words:
        return None
    if len(words) > 1:
        out.error(
            number, words[1].col, f"unexpected {words[1].text!r}: one entry per line, no spaces"
        )
        return None
    return words[0]


def _parse_slave(token: Token, number: int, out: Collector) -> Slave | None:
    before = len(out.problems)
    host_token, *option_tokens = split_on(token, ":")
    if len(option_tokens) > 1:
        out.error(
            number, option_tokens[1].col - 1, "expected host[:option,option...] with a single ':'"
        )
        return None
    host = parse_token(host_token, parse_host, number, out)
    flags: dict[str, bool] = {"noselect": False, "compress": False}
    bwlimit: int | None = None
    seen: set[str] = set()
    for option in split_on(option_tokens[0], ",") if option_tokens else []:
        name, equals, value = option.text.partition("=")
        if name in seen:
            out.error(number, option.col, f"option {name} given twice")
            continue
        seen.add(name)
        if name in flags and not equals:
            flags[name] = True
        elif name == "bwlimit" and equals:
            bwlimit = parse_token(
                Token(value, option.col + len(name) + 1), parse_bwlimit, number, out
            )
        else:
            out.error(
                number,
                option.col,
                f"unknown option {option.text!r}: noselect, compress or bwlimit=<n>[k|m]",
            )
    if host is None or len(out.problems) != before:
        return None
    return Slave(host, flags["noselect"], flags["compress"], bwlimit, SourceRef(out.path, number))


def parse_slaves(path: str, text: str) -> SlavesConf:
    """Parse slaves.conf: ``host[:option,option...]`` per line."""
    out = Collector(path)
    slaves: list[Slave] = []
    first_line: dict[str, int] = {}
    for number, line in iter_lines(text):
        if not check_ascii_printable(line, number, out):
            continue
        token = _single_token(line, number, out)
        if token is None:
            continue
        slave = _parse_slave(token, number, out)
        if slave is None:
            continue
        if slave.host in first_line:
            out.error(
                number,
                token.col,
                f"{slave.host} is already listed on line {first_line[slave.host]}",
            )
            continue
        first_line[slave.host] = number
        slaves.append(slave)
    out.raise_if_errors()
    return SlavesConf(tuple(slaves), path, tuple(out.warnings))


def parse_backup(path: str, text: str) -> BackupConf:
    """Parse backup.conf: ``vserver:hot`` or ``vserver:cold`` per line."""
    out = Collector(path)
    entries: list[BackupEntry] = []
    first_line: dict[str, int] = {}
    for number, line in iter_lines(text):
        if not check_ascii_printable(line, number, out):
            continue
        token = _single_token(line, number, out)
        if token is None:
            continue
        parts = split_on(token, ":")
        if len(parts) != 2:
            out.error(
                number, token.col, f"expected vserver:hot or vserver:cold, got {token.text!r}"
            )
            continue
        name = parse_token(parts[0], parse_guest_name, number, out)
        mode = parse_token(parts[1], _backup_mode, number, out)
        if name is None or mode is None:
            continue
        if name in first_line:
            out.error(number, token.col, f"{name} is already listed on line {first_line[name]}")
            continue
        first_line[name] = number
        entries.append(BackupEntry(name, mode, SourceRef(path, number)))
    out.raise_if_errors()
    return BackupConf(tuple(entries), path, tuple(out.warnings))


def _backup_mode(text: str) -> BackupMode:
    try:
        return BackupMode(text)
    except ValueError:
        raise ValueProblem(f"backup mode {text!r} is not hot or cold") from None


def render_slaves(conf: SlavesConf) -> str:
    """slaves.conf text that ``parse_slaves`` reads back to an equal model."""
    return "".join(f"{slave}\n" for slave in conf.slaves)


def render_backup(conf: BackupConf) -> str:
    """backup.conf text that ``parse_backup`` reads back to an equal model."""
    return "".join(f"{entry.name}:{entry.mode}\n" for entry in conf.entries)
