"""Reading config text: lines with their numbers, comments, tokens with their columns, and the
``KEY=VALUE`` syntax, with every problem collected as ``path:line:col: message``.

Columns are 1-based and counted in characters, like gcc and ``sshd -t``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from vstools.errors import ConfigError, Problem, Severity

# A whole-file problem (unreadable, not UTF-8 before the first line end) has no better place.
WHOLE_FILE = 0


class ValueProblem(Exception):
    """Raised by a value parser; ``offset`` is the 0-based character offset inside the value."""

    def __init__(self, message: str, offset: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset


@dataclass(frozen=True, slots=True)
class SourceRef:
    """Where a model object came from. Never part of equality: a rendered and re-parsed model
    equals the original even though its lines moved."""

    path: str
    line: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}"


@dataclass(slots=True)
class Collector:
    """Problems found in one file. ``raise_if_errors`` rejects the file whole."""

    path: str
    problems: list[Problem] = field(default_factory=list)

    def error(self, line: int, col: int, message: str) -> None:
        """Record an error at ``line``, ``col``: the file will be rejected."""
        self.problems.append(Problem(self.path, line, col, message))

    def warn(self, line: int, col: int, message: str) -> None:
        """Record a warning at ``line``, ``col``: the file is still accepted."""
        self.problems.append(Problem(self.path, line, col, message, Severity.WARNING))

    @property
    def warnings(self) -> tuple[Problem, ...]:
        """The warnings found so far, in the order found."""
        return tuple(p for p in self.problems if p.severity is Severity.WARNING)

    def has_errors(self) -> bool:
        """Whether any problem found is an error (warnings alone do not count)."""
        return any(p.severity is Severity.ERROR for p in self.problems)

    def raise_if_errors(self) -> None:
        """Raise ConfigError with every problem, sorted, warnings too, if any is an error."""
        if self.has_errors():
            raise ConfigError(sorted(self.problems, key=lambda p: (p.line, p.col)))


@dataclass(frozen=True, slots=True)
class Token:
    """A piece of a line and the column it starts at."""

    text: str
    col: int  # 1-based column of the token's first character


T = TypeVar("T")


def parse_token(token: Token, parse: Callable[[str], T], line: int, out: Collector) -> T | None:
    """``parse(token.text)``, or None after reporting the problem at the right column."""
    try:
        return parse(token.text)
    except ValueProblem as exc:
        out.error(line, token.col + exc.offset, exc.message)
        return None


def decode(path: str, data: bytes, out: Collector) -> str | None:
    """UTF-8 text of ``data``; a bad byte or a NUL is reported at its line and column."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = data[: exc.start].decode("utf-8", "replace")
        line = before.count("\n") + 1
        col = len(before) - (before.rfind("\n") + 1) + 1
        out.error(line, col, f"not UTF-8 text (byte 0x{data[exc.start]:02x})")
        return None
    nul = text.find("\0")
    if nul >= 0:
        line = text.count("\n", 0, nul) + 1
        out.error(line, nul - (text.rfind("\n", 0, nul) + 1) + 1, "NUL character in a text file")
        return None
    return text


def read_config(path: str | Path) -> tuple[str, str]:
    """Read ``path`` as config text: ``(path, text)``. Raises ConfigError if unreadable."""
    name = str(path)
    out = Collector(name)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        out.error(WHOLE_FILE, WHOLE_FILE, f"cannot read: {exc.strerror or exc}")
        out.raise_if_errors()
        raise  # unreachable: raise_if_errors raised
    text = decode(name, data, out)
    if text is None:
        raise ConfigError(out.problems)
    return name, text


def iter_lines(text: str) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` for every line, the end-of-line characters removed."""
    for number, line in enumerate(text.split("\n"), start=1):
        yield number, line.removesuffix("\r")


def strip_comment(line: str) -> str:
    """The line without its ``#`` comment (for formats whose values never contain ``#``)."""
    cut = line.find("#")
    return line if cut < 0 else line[:cut]


_WORD = re.compile(r"\S+")


def split_words(line: str) -> list[Token]:
    """Whitespace-separated tokens with their columns."""
    return [Token(m.group(), m.start() + 1) for m in _WORD.finditer(line)]


def split_on(token: Token, separator: str) -> list[Token]:
    """Split a token on a one-character separator, keeping each piece's column."""
    pieces: list[Token] = []
    col = token.col
    for piece in token.text.split(separator):
        pieces.append(Token(piece, col))
        col += len(piece) + 1
    return pieces


# Control characters but tab (one search per line, not a loop over its characters: status
# reads every guest.conf, issue 17).
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f]")


def check_ascii_printable(line: str, number: int, out: Collector) -> bool:
    """Control characters (other than tab) are rejected: they hide what a line says."""
    found = _CONTROL.search(line)
    if found is not None:
        out.error(number, found.start() + 1, f"control character U+{ord(found.group()):04X}")
        return False
    return True


# ---------------------------------------------------------------------------------------------
# KEY=VALUE files (create.conf, monitor.conf, guest.conf, vs-tools.conf).
#
# The original toolkit *sourced* these with the shell. We read the same text without a shell:
# quotes are understood so old files keep working, but nothing is expanded or executed, so
# `$(touch /tmp/x)` is text (catalogue P6).

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*", re.ASCII)
_BARE = re.compile(r"[^ \t'\"\\]*")


@dataclass(frozen=True, slots=True)
class Assignment:
    """One ``KEY=VALUE`` line: the value unquoted, and the columns of the key and of the value."""

    key: str
    value: str
    line: int
    key_col: int
    value_col: int  # column of the value's first character (inside the quotes when quoted)


def _scan_value(line: str, start: int, number: int, out: Collector) -> tuple[str, int] | None:
    """Read a shell-like value at ``line[start:]``: bare, 'single' or "double" quoted pieces
    concatenated. Returns the value and the offset just after it, or None after an error."""
    bare = _BARE.match(line, start)  # always matches (the empty string at worst)
    if bare is not None and (bare.end() == len(line) or line[bare.end()] in " \t"):
        return bare.group(), bare.end()  # no quote, no backslash: the common case, at once
    value: list[str] = []
    i = start
    while i < len(line) and line[i] not in " \t":
        char = line[i]
        if char == "'":
            end = line.find("'", i + 1)
            if end < 0:
                out.error(number, i + 1, "unterminated single quote")
                return None
            value.append(line[i + 1 : end])
            i = end + 1
        elif char == '"':
            i += 1
            while True:
                if i >= len(line):
                    out.error(number, start + 1, "unterminated double quote")
                    return None
                char = line[i]
                if char == '"':
                    i += 1
                    break
                # Inside double quotes the shell only lets a backslash escape these four.
                if char == "\\" and i + 1 < len(line) and line[i + 1] in '"\\$`':
                    value.append(line[i + 1])
                    i += 2
                    continue
                value.append(char)
                i += 1
        elif char == "\\":
            if i + 1 >= len(line):
                out.error(
                    number,
                    i + 1,
                    "backslash at the end of the line (continuation lines are not supported)",
                )
                return None
            value.append(line[i + 1])
            i += 2
        else:
            value.append(char)
            i += 1
    return "".join(value), i


def parse_assignments(path: str, text: str, out: Collector) -> list[Assignment]:
    """Every ``KEY=VALUE`` line of ``text``; malformed lines are reported to ``out``."""
    del path  # the collector knows it; kept in the signature for symmetry with the line parsers
    found: list[Assignment] = []
    for number, line in iter_lines(text):
        if not check_ascii_printable(line, number, out):
            continue
        body = line.lstrip(" \t")
        if not body or body.startswith("#"):
            continue
        indent = len(line) - len(body)
        if body.startswith("export") and body[6:7] in (" ", "\t"):
            out.error(number, indent + 1, "'export' is shell syntax; write KEY=VALUE")
            continue
        key_match = _KEY.match(body)
        if key_match is None:
            out.error(number, indent + 1, "expected KEY=VALUE")
            continue
        key = key_match.group()
        after = indent + len(key)
        if after >= len(line) or line[after] != "=":
            if after < len(line) and line[after] in " \t":
                out.error(number, after + 1, "no spaces around '=' (KEY=VALUE)")
            else:
                out.error(number, after + 1, f"expected '=' after {key}")
            continue
        scanned = _scan_value(line, after + 1, number, out)
        if scanned is None:
            continue
        value, end = scanned
        rest = line[end:].lstrip(" \t")
        if rest and not rest.startswith("#"):
            col = len(line) - len(rest) + 1
            out.error(number, col, "unexpected text after the value (quote values with spaces)")
            continue
        value_col = after + 2 + (1 if line[after + 1 : after + 2] in ("'", '"') else 0)
        found.append(Assignment(key, value, number, indent + 1, value_col))
    return found


def quote_value(value: str) -> str:
    """Render a value so that ``parse_assignments`` (and a shell) read it back unchanged."""
    if value and re.fullmatch(r"[A-Za-z0-9_./:@%+,=-]+", value, re.ASCII):
        return value
    escaped = "".join("\\" + c if c in '"\\$`' else c for c in value)
    return f'"{escaped}"'
