"""What vs-pkg asks of a package manager, independent of which one: the actions in the order
they run, and the interface each package manager module (apt, dnf, apk) implements as pure argv
builders."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol


class Action(StrEnum):
    """One step of a vs-pkg run; the declaration order is the order they run in (the slides'
    one-liner ``--update_sources --list_upgrades --upgrade_all --install P``)."""

    UPDATE_SOURCES = "update_sources"
    LIST_UPGRADES = "list_upgrades"
    UPGRADE_ALL = "upgrade_all"
    UPGRADE = "upgrade"
    INSTALL = "install"
    REMOVE = "remove"
    SEARCH = "search"
    SHOW = "show"
    LIST_INSTALLED = "list_installed"  # no operation named: the installed packages


# Actions that download (the guest needs its mirrors) and actions that change the guest's
# packages (a snapshot is taken first on btrfs and lvm).
NEEDS_MIRRORS = frozenset(
    {Action.UPDATE_SOURCES, Action.UPGRADE_ALL, Action.UPGRADE, Action.INSTALL}
)
CHANGES_PACKAGES = frozenset({Action.UPGRADE_ALL, Action.UPGRADE, Action.INSTALL, Action.REMOVE})
LISTS = frozenset({Action.LIST_UPGRADES, Action.SEARCH, Action.LIST_INSTALLED, Action.SHOW})


class Conffiles(StrEnum):
    """What dpkg does with a configuration file the administrator changed: keep it (old, the
    default, ``--force-confold``) or take the package's (new, ``--force-confnew``)."""

    OLD = "old"
    NEW = "new"


@dataclass(frozen=True, slots=True)
class Step:
    """One action with its arguments (package names, a search term)."""

    action: Action
    args: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Invocation:
    """A command to run inside the guest: its argv and the environment it adds; ``ok_codes``
    are the exit statuses that mean success (``dnf check-update`` says 100 when there are
    upgrades)."""

    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    ok_codes: frozenset[int] = frozenset({0})


@dataclass(frozen=True, slots=True)
class Package:
    """A package in a list: its name, and the versions the list knows."""

    name: str
    version: str = ""
    candidate: str = ""
    summary: str = ""


class PackageTool(Protocol):
    """A package manager as vs-pkg drives it: pure builders and parsers, nothing run here."""

    name: str

    def invocation(self, step: Step, proxy_url: str | None, conffiles: Conffiles) -> Invocation:
        """The command for ``step``; ``proxy_url`` when the run has its mirrors' proxy."""
        ...

    def parse_list(self, action: Action, text: str) -> list[Package]:
        """The packages a list action printed (LIST_UPGRADES, SEARCH, LIST_INSTALLED)."""
        ...

    def mirror_files(self) -> Sequence[str]:
        """Files and directories (ending in ``/``) inside the guest that name its mirrors."""
        ...

    def parse_mirrors(self, path: str, text: str) -> list[str]:
        """The mirror URLs one of those files names."""
        ...


def order_steps(steps: Sequence[Step]) -> list[Step]:
    """``steps`` in the order vs-pkg runs them (Action's order), stable within one action."""
    rank = {action: index for index, action in enumerate(Action)}
    return sorted(steps, key=lambda step: rank[step.action])
