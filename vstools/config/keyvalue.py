"""A declarative schema for ``KEY=VALUE`` files: each key names its attribute, its value parser
and its renderer, so parsing, ``vs-check`` and rendering (model -> text -> model) share one table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from vstools.config.lexer import (
    WHOLE_FILE,
    Collector,
    ValueProblem,
    parse_assignments,
    quote_value,
)
from vstools.errors import Problem


def _render_default(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, tuple):
        return " ".join(str(v) for v in value)
    return str(value)


@dataclass(frozen=True, slots=True)
class Field:
    """One key of a KEY=VALUE file."""

    key: str
    attr: str
    parse: Callable[[str], Any]
    render: Callable[[Any], str] = _render_default
    # Accepted but cannot work here (e.g. FAKE_OS): the warning says why.
    warning: str | None = None
    doc: str = ""


def meta_fields() -> tuple[Any, Any, Any]:
    """The ``path``, ``key_lines`` and ``warnings`` fields every parsed file carries: where it
    came from, not what it says, so they are kept out of equality."""
    return (
        dataclasses.field(default="", compare=False, repr=False),
        dataclasses.field(default=(), compare=False, repr=False),
        dataclasses.field(default=(), compare=False, repr=False),
    )


class KeyValueFile:
    """Mixin for frozen dataclasses read from KEY=VALUE text.

    Subclasses declare ``SCHEMA`` and dataclass fields named by ``Field.attr``, plus ``path``
    (where it was read) and ``key_lines`` (``(KEY, line, value column)``) and ``warnings``."""

    SCHEMA: ClassVar[tuple[Field, ...]]
    FILE_NAME: ClassVar[str]

    path: str
    key_lines: tuple[tuple[str, int, int], ...]  # (KEY, line, column of the value)
    warnings: tuple[Problem, ...]

    def line_of(self, key: str) -> int | None:
        """The line that set ``key``, or None when it took its default."""
        for name, line, _ in self.key_lines:
            if name == key:
                return line
        return None

    def place_of(self, key: str) -> tuple[int, int]:
        """``(line, column)`` of ``key``'s value, or the whole file's place when defaulted."""
        for name, line, col in self.key_lines:
            if name == key:
                return line, col
        return WHOLE_FILE, WHOLE_FILE

    def cross_check(self, out: Collector) -> None:
        """Checks that involve several keys; report to ``out`` (line from ``line_of``)."""

    @classmethod
    def parse(cls, path: str, text: str) -> Self:
        """Parse KEY=VALUE text into the model, or raise ConfigError listing every problem."""
        out = Collector(path)
        by_key, required = _schema_of(cls)
        values: dict[str, Any] = {}
        lines: dict[str, int] = {}
        places: list[tuple[str, int, int]] = []
        for item in parse_assignments(path, text, out):
            spec = by_key.get(item.key)
            if spec is None:
                import difflib  # a misspelt key only

                close = difflib.get_close_matches(item.key.upper(), list(by_key), n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                out.error(item.line, item.key_col, f"unknown key {item.key}{hint}")
                continue
            if item.key in lines:
                out.error(
                    item.line, item.key_col, f"{item.key} is already set on line {lines[item.key]}"
                )
                continue
            lines[item.key] = item.line
            places.append((item.key, item.line, item.value_col))
            try:
                values[spec.attr] = spec.parse(item.value)
            except ValueProblem as exc:
                out.error(item.line, item.value_col + exc.offset, f"{item.key}: {exc.message}")
                continue
            if spec.warning:
                out.warn(item.line, item.key_col, f"{item.key}: {spec.warning}")
        missing = [
            f.key
            for f in cls.SCHEMA
            if f.attr not in values and f.key not in lines and f.attr in required
        ]
        for key in missing:
            out.error(WHOLE_FILE, WHOLE_FILE, f"missing required key {key}")
        out.raise_if_errors()
        model = cls(**values, path=path, key_lines=tuple(places))  # type: ignore[call-arg]
        model.cross_check(out)
        out.raise_if_errors()
        object.__setattr__(model, "warnings", tuple(out.warnings))
        return model

    def render(self, *, header: str = "") -> str:
        """KEY=VALUE text that ``parse`` reads back to an equal model. Unset optional keys are
        left out; everything else is written, so the file says exactly what is in force."""
        lines = [f"# {row}" if row else "#" for row in header.splitlines()]
        for spec in self.SCHEMA:
            value = getattr(self, spec.attr)
            if value is None or (isinstance(value, tuple) and not value):
                continue
            lines.append(f"{spec.key}={quote_value(spec.render(value))}")
        return "\n".join(lines) + "\n"


# A model's fields by key, and the attributes without a default (required), worked out once
# per class: status parses 100 guest.conf files in one command (issue 17).
_SCHEMAS: dict[type, tuple[dict[str, Field], frozenset[str]]] = {}


def _schema_of(cls: type[KeyValueFile]) -> tuple[dict[str, Field], frozenset[str]]:
    found = _SCHEMAS.get(cls)
    if found is None:
        required = frozenset(
            item.name
            for item in dataclasses.fields(cls)  # type: ignore[arg-type]
            if item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING
        )
        found = _SCHEMAS[cls] = ({f.key: f for f in cls.SCHEMA}, required)
    return found
