"""Where everything lives. The defaults below are the only place host paths are spelled out;
``vs-tools.conf`` and the ``VS_*`` environment variables override them (environment first), so
tests and unusual hosts never touch the real ``/etc``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from vstools.config.settings import Settings
from vstools.names import check_guest_name

DEFAULT_DIRS: Mapping[str, str] = {
    "etc_dir": "/etc/vs-tools",
    "guests_conf_dir": "/etc/vservers",
    "root_dir": "/var/lib/vservers",
    "state_dir": "/var/lib/vs-tools",
    "run_dir": "/run/vs-tools",
}

# Where vs-setup installs the systemd units (override with --unit-dir).
DEFAULT_UNIT_DIR = "/etc/systemd/system"
# munin-node's plugin directory, where vs-setup links the vs_ plugin when it exists
# (override with --munin-dir).
DEFAULT_MUNIN_PLUGIN_DIR = "/etc/munin/plugins"
DEFAULT_MUNIN_LIB_DIR = "/usr/local/share/munin/plugins"
DEFAULT_MUNIN_CONF_DIR = "/etc/munin/plugin-conf.d"

ENV_VARS: Mapping[str, str] = {attr: "VS_" + attr.upper() for attr in DEFAULT_DIRS}


@dataclass(frozen=True, slots=True)
class Paths:
    """The host directories every command works under (see ``resolve_paths``)."""

    etc_dir: Path
    guests_conf_dir: Path
    root_dir: Path
    state_dir: Path
    run_dir: Path

    @property
    def settings_file(self) -> Path:
        """vs-tools.conf, in the configuration directory."""
        return self.etc_dir / "vs-tools.conf"

    def etc_file(self, name: str) -> Path:
        """A file of the host's configuration directory (networks.conf, create.conf, ...)."""
        return self.etc_dir / name

    def guest_dir(self, name: str) -> Path:
        """The guest's configuration directory; the name is validated first (D15)."""
        return self.guests_conf_dir / check_guest_name(name)

    def guest_root(self, name: str) -> Path:
        """Where the guest's root filesystem is; the name is validated first (D15)."""
        return self.root_dir / check_guest_name(name)

    def monitor_figures_dir(self) -> Path:
        """Each guest's monitor state (figures, open alerts, counters), world-readable for the
        Munin plugin: STATE_DIR/monitor/guests."""
        return self.state_dir / "monitor" / "guests"

    @property
    def pkg_cache_dir(self) -> Path:
        """vs-pkg's package cache with PKG_CACHE=apt-cacher-ng, kept across runs and shared by
        them: STATE_DIR/pkg-cache (root's, 0700), outside every guest's root."""
        return self.state_dir / "pkg-cache"

    def guest_run_dir(self, name: str) -> Path:
        """The guest's runtime files, under RUN_DIR/guests; the name is validated first (D15)."""
        return self.run_dir / "guests" / check_guest_name(name)

    def as_dict(self) -> dict[str, str]:
        """The directories as strings, keyed by attribute name (etc_dir, root_dir, ...)."""
        return {attr: str(getattr(self, attr)) for attr in DEFAULT_DIRS}


def etc_dir_from(env: Mapping[str, str]) -> Path:
    """The configuration directory: ``VS_ETC_DIR`` or the default."""
    return Path(env.get(ENV_VARS["etc_dir"]) or DEFAULT_DIRS["etc_dir"])


def resolve_paths(env: Mapping[str, str], settings: Settings | None = None) -> Paths:
    """Paths from the environment, then ``vs-tools.conf``, then the defaults."""
    chosen: dict[str, Path] = {}
    for attr, default in DEFAULT_DIRS.items():
        from_conf = getattr(settings, attr, None) if settings is not None else None
        chosen[attr] = Path(env.get(ENV_VARS[attr]) or from_conf or default)
    return Paths(**chosen)


# In a guest's configuration directory from the first step of vs-create to its last: a
# directory holding it is what a vs-create killed halfway left (catalogue A8).
INCOMPLETE_MARKER = ".vs-create-incomplete"
# In a guest's configuration directory while vs-remove takes it away: the guest is gone from
# every listing, and running vs-remove again finishes what a killed one began.
REMOVING_MARKER = ".vs-remove-begun"
# In a guest's configuration directory while vs-move takes it to another host: the guest must
# not start here until the move is finished or rolled back (it would run twice).
MOVING_MARKER = ".vs-move-begun"
# The suffix of a moved guest's directories, kept until it runs at its destination.
MOVED_SUFFIX = ".moved"
