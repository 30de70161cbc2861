"""Guest name validation, applied before any path, command line or rule is built (catalogue D15)."""

from __future__ import annotations

import re

from vstools.errors import InvalidName

# 1-63 characters: a DNS label that starts with a letter, so a name is always a valid hostname,
# an nft set element, a systemd instance name and a path component, and never an option ("-rf").
_GUEST_NAME = re.compile(r"[A-Za-z](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?", re.ASCII)
_HOST_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?", re.ASCII)

GUEST_NAME_RULE = (
    "1-63 ASCII letters, digits and '-', starting with a letter and not ending with '-'"
)


def guest_name_problem(name: str) -> str | None:
    """Why ``name`` is not a valid guest name, or None when it is."""
    if _GUEST_NAME.fullmatch(name):
        return None
    return f"invalid guest name {name!r}: {GUEST_NAME_RULE}"


def check_guest_name(name: str) -> str:
    """Return ``name`` if it is a valid guest name, else raise InvalidName."""
    problem = guest_name_problem(name)
    if problem is not None:
        raise InvalidName(problem)
    return name


def hostname_problem(name: str) -> str | None:
    """Why ``name`` is not a valid DNS host name (labels of letters, digits, '-'), or None."""
    if not name or len(name) > 253:
        return f"invalid host name {name!r}: 1-253 characters"
    labels = name.rstrip(".").split(".") if name != "." else [""]
    for label in labels:
        if not _HOST_LABEL.fullmatch(label):
            return f"invalid host name {name!r}: label {label!r} is not letters, digits and '-'"
    if labels[-1].isdigit():
        return f"invalid host name {name!r}: the last label cannot be all digits"
    return None
