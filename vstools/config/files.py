"""Which parser reads which file: the table ``vs-check`` and ``vs-fonctions parse`` use to
recognise a file by its name."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from vstools.config.create import CreateConf
from vstools.config.firewall import parse_firewall
from vstools.config.guest import GuestConf
from vstools.config.lexer import WHOLE_FILE, read_config
from vstools.config.monitor import MonitorConf
from vstools.config.networks import parse_networks
from vstools.config.pool import parse_backup, parse_slaves
from vstools.config.settings import Settings
from vstools.errors import ConfigError, NotFoundError, Problem


@dataclass(frozen=True, slots=True)
class FileKind:
    """One known file: its base name, its parser (path, text) and what it holds."""

    name: str
    parse: Callable[[str, str], object]
    what: str


FILE_KINDS: dict[str, FileKind] = {
    kind.name: kind
    for kind in (
        FileKind("vs-tools.conf", Settings.parse, "paths and global switches"),
        FileKind("networks.conf", parse_networks, "the networks guests may live in"),
        FileKind("create.conf", CreateConf.parse, "defaults for vs-create"),
        FileKind("firewall.conf", parse_firewall, "a guest's firewall rules (or their template)"),
        FileKind("monitor.conf", MonitorConf.parse, "a guest's monitor policy (or its template)"),
        FileKind("slaves.conf", parse_slaves, "the pool's hosts (master)"),
        FileKind("backup.conf", parse_backup, "the guests to back up (master)"),
        FileKind("guest.conf", GuestConf.parse, "one guest's settings"),
    )
}


def kind_of(path: str | Path) -> FileKind:
    """The file kind named by ``path``'s base name (``*.conf.sample`` counts as ``*.conf``)."""
    name = Path(path).name.removesuffix(".sample")
    kind = FILE_KINDS.get(name)
    if kind is None:
        known = ", ".join(FILE_KINDS)
        raise NotFoundError(f"{path}: cannot tell which file this is from its name; known: {known}")
    return kind


def parse_file(path: str | Path) -> object:
    """Read and parse one file, recognised by its name. Raises ConfigError or NotFoundError."""
    kind = kind_of(path)
    name, text = read_config(path)
    return kind.parse(name, text)


def warnings_of(model: object) -> tuple[Problem, ...]:
    """The warnings a parsed model carries; () for a model without ``warnings``."""
    found: tuple[Problem, ...] = getattr(model, "warnings", ())
    return found


def check_files(files: Sequence[str]) -> list[Problem]:
    """Every problem of the files named, each parsed by its file name (vs-check FILE...)."""
    problems: list[Problem] = []
    for path in files:
        try:
            problems.extend(warnings_of(parse_file(path)))
        except ConfigError as exc:
            problems.extend(exc.problems)
        except NotFoundError as exc:
            problems.append(
                Problem(path, WHOLE_FILE, WHOLE_FILE, str(exc).removeprefix(f"{path}: "))
            )
    return problems
