"""Models to JSON-able values, for ``--json`` and for ``vs-fonctions`` between hosts."""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
from pathlib import PurePath
from typing import Any

from vstools.config.values import CpuRatio
from vstools.errors import Problem

# Bookkeeping fields of parsed files: where they came from, not what they say.
_SKIPPED = frozenset({"path", "key_lines", "warnings", "source", "form"})


def to_jsonable(value: Any) -> Any:
    """Dataclasses become objects (bookkeeping fields left out, a rule keeps its line), enums
    their value, addresses and ratios their text, tuples lists."""
    if isinstance(value, Problem):
        return {
            "path": value.path,
            "line": value.line,
            "col": value.col,
            "severity": value.severity.value,
            "message": value.message,
        }
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, CpuRatio | PurePath | ipaddress.IPv4Address | ipaddress.IPv4Network):
        return str(value)
    if getattr(type(value), "JSON_AS_TEXT", None):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        result: dict[str, Any] = {
            f.name: to_jsonable(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if f.name not in _SKIPPED
        }
        line: int | None = getattr(getattr(value, "source", None), "line", None)
        if line:
            result["line"] = line
        return result
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_jsonable(v) for v in value]
    return value
