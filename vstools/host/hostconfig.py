"""Loading and checking the host's whole configuration tree: vs-tools.conf, the files of the
configuration directory, and every guest's directory. Read-only: nothing here changes the host.

``HostConfig`` is that configuration as one command sees it: built once (from the environment)
by the command, passed down to every layer, each file parsed the first time it is needed and
never again, as mkosi passes its Context. No layer re-reads what another has read."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from vstools.config.guest import GuestConf
from vstools.config.lexer import WHOLE_FILE, read_config
from vstools.config.settings import Settings
from vstools.errors import ConfigError, NotFoundError, Problem, Severity
from vstools.host.cgrouplayout import CgroupLayout, probe_layout
from vstools.names import check_guest_name, guest_name_problem
from vstools.paths import (
    INCOMPLETE_MARKER,
    REMOVING_MARKER,
    Paths,
    etc_dir_from,
    resolve_paths,
)

# The parsers of the other files are imported where they are used: every command loads this
# module, and showing guests' state (vs-control --all) reads guest.conf alone (issue 17: about
# 10 ms of imports, create.conf's, the firewall's, monitor's, networks' and the pool's parsers).
if TYPE_CHECKING:
    from vstools.config.create import CreateConf
    from vstools.config.firewall import FirewallConf
    from vstools.config.monitor import MonitorConf
    from vstools.config.networks import NetworksConf

T = TypeVar("T")


def load_settings(env: Mapping[str, str] | None = None) -> tuple[Settings, Paths]:
    """vs-tools.conf (defaults when absent) and the paths it and the environment give."""
    environ = os.environ if env is None else env
    settings_file = etc_dir_from(environ) / Settings.FILE_NAME
    settings = load_optional(settings_file, Settings.parse, Settings())
    return settings, resolve_paths(environ, settings)


def load_optional(path: Path, parse: Callable[[str, str], T], default: T) -> T:
    """Parse ``path`` if it exists, else return ``default``. ConfigError when invalid."""
    if not path.exists():
        return default
    name, text = read_config(path)
    return parse(name, text)


def load_networks(paths: Paths) -> NetworksConf:
    """networks.conf (no network when absent); ConfigError when invalid."""
    from vstools.config.networks import NetworksConf, parse_networks

    return load_optional(paths.etc_file("networks.conf"), parse_networks, NetworksConf(()))


def load_create(paths: Paths) -> CreateConf:
    """create.conf (its defaults when absent); ConfigError when invalid."""
    from vstools.config.create import CreateConf

    return load_optional(paths.etc_file("create.conf"), CreateConf.parse, CreateConf())


@dataclass(frozen=True, slots=True)
class GuestFiles:
    """One guest's three files, parsed."""

    conf: GuestConf
    firewall: FirewallConf
    monitor: MonitorConf


def list_guests(paths: Paths) -> list[str]:
    """Names of the guests defined on this host (directories holding a guest.conf), sorted.
    Directories whose name is not a valid guest name are ignored here; vs-check reports them."""
    try:
        entries = os.listdir(paths.guests_conf_dir)
    except FileNotFoundError:
        return []
    base = str(paths.guests_conf_dir)  # strings: pathlib costs more than the stat (vs-monitor)
    return sorted(
        name
        for name in entries
        if guest_name_problem(name) is None
        and os.path.isfile(f"{base}/{name}/{GuestConf.FILE_NAME}")
        and not os.path.exists(f"{base}/{name}/{INCOMPLETE_MARKER}")
        and not os.path.exists(f"{base}/{name}/{REMOVING_MARKER}")
    )


def load_guest(paths: Paths, name: str) -> GuestFiles:
    """Parse the guest's files; NotFoundError when it is not defined, ConfigError when invalid."""
    directory = paths.guest_dir(check_guest_name(name))
    if not (directory / GuestConf.FILE_NAME).is_file():
        raise NotFoundError(
            f"no guest named {name} on this host ({directory / GuestConf.FILE_NAME} does not exist)"
        )
    conf, firewall, monitor, problems = read_guest_files(directory, name)
    errors = [p for p in problems if p.severity is Severity.ERROR]
    if errors or conf is None or firewall is None or monitor is None:
        raise ConfigError(errors)
    return GuestFiles(conf, firewall, monitor)


def load_guest_conf(paths: Paths, name: str) -> GuestConf:
    """Parse the guest's guest.conf alone (status, enable, disable need nothing else):
    NotFoundError when the guest is not defined, ConfigError when the file is invalid."""
    path = paths.guest_dir(check_guest_name(name)) / GuestConf.FILE_NAME
    if not path.is_file():
        raise NotFoundError(f"no guest named {name} on this host ({path} does not exist)")
    name_in_file, text = read_config(path)
    conf = GuestConf.parse(name_in_file, text)
    if conf.name != name:
        line, col = conf.place_of("NAME")
        raise ConfigError(
            [Problem(conf.path, line, col, f"NAME={conf.name} but the guest's directory is {name}")]
        )
    return conf


def read_guest_files(
    directory: Path, name: str
) -> tuple[GuestConf | None, FirewallConf | None, MonitorConf | None, list[Problem]]:
    """Each of the guest's three files parsed on its own, so one broken file does not hide the
    others' problems; plus every problem (errors and warnings) found."""
    from vstools.config.firewall import FirewallConf, parse_firewall
    from vstools.config.monitor import MonitorConf

    problems: list[Problem] = []
    conf = _collect(
        partial(load_optional, directory / GuestConf.FILE_NAME, GuestConf.parse, None), problems
    )
    firewall = _collect(
        partial(load_optional, directory / "firewall.conf", parse_firewall, FirewallConf()),
        problems,
    )
    monitor = _collect(
        partial(load_optional, directory / "monitor.conf", MonitorConf.parse, MonitorConf()),
        problems,
    )
    for model in (conf, firewall, monitor):
        if model is not None:
            problems.extend(model.warnings)
    if conf is not None and conf.name != name:
        line, col = conf.place_of("NAME")
        problems.append(
            Problem(conf.path, line, col, f"NAME={conf.name} but the guest's directory is {name}")
        )
        conf = None
    return conf, firewall, monitor, problems


@dataclass
class HostConfig:
    """The host's paths and vs-tools.conf, and its other files parsed on first use."""

    paths: Paths
    settings: Settings
    _create: CreateConf | None = field(default=None, repr=False)
    _networks: NetworksConf | None = field(default=None, repr=False)
    _guests: dict[str, GuestFiles] = field(default_factory=dict, repr=False)
    _confs: dict[str, GuestConf] = field(default_factory=dict, repr=False)
    _layout: CgroupLayout | None = field(default=None, repr=False)

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None) -> HostConfig:
        """vs-tools.conf and the paths from the environment (``os.environ`` by default)."""
        settings, paths = load_settings(env)
        return cls(paths, settings)

    @classmethod
    def given(
        cls,
        paths: Paths,
        settings: Settings | None = None,
        *,
        create: CreateConf | None = None,
        networks: NetworksConf | None = None,
    ) -> HostConfig:
        """A host whose create.conf and networks.conf are given rather than read (tests and
        benchmarks; the master describing a slave)."""
        return cls(paths, settings or Settings(), _create=create, _networks=networks)

    def hostname(self) -> str:
        """This host's name as the toolkit prints it: HOSTNAME of vs-tools.conf, else the
        kernel's short name (``os.uname``: what ``socket.gethostname`` returns, without
        importing ``socket`` into every command)."""
        return self.settings.hostname or os.uname().nodename.split(".")[0]

    def create(self) -> CreateConf:
        """create.conf (its defaults when absent)."""
        if self._create is None:
            self._create = load_create(self.paths)
        return self._create

    def networks(self) -> NetworksConf:
        """networks.conf (no network when absent)."""
        if self._networks is None:
            self._networks = load_networks(self.paths)
        return self._networks

    def cgroup_layout(self) -> CgroupLayout:
        """Where the cgroup hierarchies are (read from the mounts table once)."""
        if self._layout is None:
            self._layout = probe_layout()
        return self._layout

    def guest_names(self) -> list[str]:
        """The guests defined on this host (read each time: creations and removals change it)."""
        return list_guests(self.paths)

    def guest(self, name: str) -> GuestFiles:
        """The guest's three files: NotFoundError, ConfigError as ``load_guest``."""
        if name not in self._guests:
            self._guests[name] = load_guest(self.paths, name)
            self._confs[name] = self._guests[name].conf
        return self._guests[name]

    def guest_conf(self, name: str) -> GuestConf:
        """The guest's guest.conf alone (status, enable and disable need nothing else)."""
        if name not in self._confs:
            self._confs[name] = load_guest_conf(self.paths, name)
        return self._confs[name]

    def fresh(self) -> HostConfig:
        """The same host with nothing read yet (for a long-lived process: a supervisor's stop
        months after its start must not use the files it read then)."""
        return HostConfig(self.paths, self.settings)

    def forget(self, name: str) -> None:
        """Drop what was read of a guest whose files this command has just rewritten."""
        self._guests.pop(name, None)
        self._confs.pop(name, None)


def _collect(load: Callable[[], T], problems: list[Problem]) -> T | None:
    try:
        return load()
    except ConfigError as exc:
        problems.extend(exc.problems)
        return None


def check_tree(env: Mapping[str, str] | None = None) -> list[Problem]:
    """Every problem (errors and warnings) in the host's configuration, like ``sshd -t``:
    vs-tools.conf, each file of the configuration directory, each guest, and the checks across
    files (a guest's address is in a network, addresses and context numbers are unique)."""
    from vstools.config.files import FILE_KINDS
    from vstools.config.networks import NetworksConf

    problems: list[Problem] = []
    environ = os.environ if env is None else env
    settings_file = etc_dir_from(environ) / Settings.FILE_NAME
    settings = _collect(lambda: load_optional(settings_file, Settings.parse, Settings()), problems)
    paths = resolve_paths(environ, settings)
    if settings is not None:
        problems.extend(settings.warnings)
    models: dict[str, object] = {}
    for name, kind in FILE_KINDS.items():
        if name in ("vs-tools.conf", "guest.conf"):
            continue
        model = _collect(
            partial(load_optional, paths.etc_file(kind.name), kind.parse, None), problems
        )
        if model is not None:
            models[name] = model
            problems.extend(getattr(model, "warnings", ()))
    networks = models.get("networks.conf")
    if networks is None and not paths.etc_file("networks.conf").exists() and list_guests(paths):
        problems.append(
            Problem(
                str(paths.etc_file("networks.conf")),
                WHOLE_FILE,
                WHOLE_FILE,
                "missing: guests are defined but no network is; their addresses cannot be checked",
                Severity.WARNING,
            )
        )
    problems.extend(_check_guests(paths, networks if isinstance(networks, NetworksConf) else None))
    return problems


def _check_guests(paths: Paths, networks: NetworksConf | None) -> list[Problem]:
    problems: list[Problem] = []
    try:
        entries = sorted(os.listdir(paths.guests_conf_dir))
    except FileNotFoundError:
        return problems
    seen_ip: dict[str, str] = {}
    seen_context: dict[int, str] = {}
    for entry in entries:
        directory = paths.guests_conf_dir / entry
        if not directory.is_dir() or entry.startswith("."):
            continue
        problem = guest_name_problem(entry)
        if problem is not None:
            problems.append(Problem(str(directory), WHOLE_FILE, WHOLE_FILE, problem))
            continue
        if (directory / REMOVING_MARKER).is_file():
            problems.append(
                Problem(
                    str(directory),
                    WHOLE_FILE,
                    WHOLE_FILE,
                    f"incomplete: a vs-remove of {entry} was interrupted; vs-remove --name"
                    f" {entry} finishes it",
                    Severity.WARNING,
                )
            )
            continue
        if (directory / INCOMPLETE_MARKER).is_file():
            problems.append(
                Problem(
                    str(directory),
                    WHOLE_FILE,
                    WHOLE_FILE,
                    f"incomplete: a vs-create of {entry} was interrupted; the next vs-create"
                    " removes what it left",
                    Severity.WARNING,
                )
            )
            continue
        if not (directory / GuestConf.FILE_NAME).is_file():
            problems.append(
                Problem(
                    str(directory / GuestConf.FILE_NAME),
                    WHOLE_FILE,
                    WHOLE_FILE,
                    "missing: every guest directory needs its guest.conf",
                )
            )
            continue
        conf, _, _, found = read_guest_files(directory, entry)
        problems.extend(found)
        if conf is None:
            continue
        ip_line, ip_col = conf.place_of("IP")
        if networks is not None and networks.network_for(conf.ip) is None:
            problems.append(
                Problem(
                    conf.path, ip_line, ip_col, f"{conf.ip} is in no network of {networks.path}"
                )
            )
        if str(conf.ip) in seen_ip:
            problems.append(
                Problem(
                    conf.path,
                    ip_line,
                    ip_col,
                    f"{conf.ip} is already the address of guest {seen_ip[str(conf.ip)]}",
                )
            )
        seen_ip.setdefault(str(conf.ip), entry)
        if conf.context in seen_context:
            problems.append(
                Problem(
                    conf.path,
                    *conf.place_of("CONTEXT"),
                    f"context {conf.context} is already used by guest {seen_context[conf.context]}",
                )
            )
        seen_context.setdefault(conf.context, entry)
    return problems
