"""vs-setup: install the sample configuration and the systemd units on a host."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path

from vstools.cli.common import Context, new_parser, run_command
from vstools.errors import NotFoundError
from vstools.host.fsutil import atomic_write
from vstools.host.journal import operation
from vstools.monitor import munin
from vstools.monitor.munin import GRAPHS
from vstools.paths import (
    DEFAULT_MUNIN_CONF_DIR,
    DEFAULT_MUNIN_LIB_DIR,
    DEFAULT_MUNIN_PLUGIN_DIR,
    DEFAULT_UNIT_DIR,
)
from vstools.plan import Step, apply_steps
from vstools.storage.base import ROOT_DIR_MODE, secure_root_dir

DESCRIPTION = """\
Install the sample configuration files into the configuration directory and the systemd units
into the unit directory. Every sample is written as NAME.sample (refreshed on each run, like the
original's *.conf.sample) and as NAME only where no such file exists: an administrator's file is
never overwritten. Makes ROOT_DIR, or closes it to mode 0700 (host users must not reach the
guests' files). When munin-node's plugin directory exists, installs the Munin plugin vs_ (a
standalone copy that Munin's unprivileged user can run, whatever the toolkit's own location),
links it there as vs_rss, vs_proc, vs_cpu, vs_disk, vs_tmpfs and vs_load (a link already right
is kept, a link elsewhere is refreshed, a file that is not a link is never replaced) and gives
it STATE_DIR in plugin-conf.d. Prints one line per file: installed, refreshed, kept, secured or
skipped."""


def build_parser() -> argparse.ArgumentParser:
    """The parser of vs-setup: where the configuration, the units, the Munin plugin, its links and
    its plugin-conf.d entry go, and where the samples come from."""
    parser = new_parser("vs-setup", DESCRIPTION, mutating=True)
    parser.add_argument(
        "--etc-dir",
        metavar="DIR",
        help="configuration directory (default: VS_ETC_DIR or /etc/vs-tools)",
    )
    parser.add_argument(
        "--unit-dir",
        metavar="DIR",
        default=DEFAULT_UNIT_DIR,
        help=f"systemd unit directory (default: {DEFAULT_UNIT_DIR})",
    )
    parser.add_argument(
        "--munin-dir",
        metavar="DIR",
        default=DEFAULT_MUNIN_PLUGIN_DIR,
        help="munin-node's plugin directory; the plugin links are skipped when it does not"
        f" exist (default: {DEFAULT_MUNIN_PLUGIN_DIR})",
    )
    parser.add_argument(
        "--munin-lib",
        metavar="DIR",
        default=DEFAULT_MUNIN_LIB_DIR,
        help=f"where the plugin itself is installed (default: {DEFAULT_MUNIN_LIB_DIR})",
    )
    parser.add_argument(
        "--munin-conf-dir",
        metavar="DIR",
        default=DEFAULT_MUNIN_CONF_DIR,
        help=f"munin-node's plugin-conf.d (default: {DEFAULT_MUNIN_CONF_DIR})",
    )
    parser.add_argument(
        "--source",
        metavar="DIR",
        help="where the samples are (default: the installed share/vs-tools, or"
        " the source checkout)",
    )
    return parser


def find_source(explicit: str | None) -> Path:
    """The directory holding ``etc/vs-tools`` and ``systemd``: installed data files first, then
    the source checkout this module runs from."""
    candidates = (
        [Path(explicit)]
        if explicit
        else [
            Path(sys.prefix) / "share" / "vs-tools",
            Path(__file__).resolve().parents[2],
        ]
    )
    for candidate in candidates:
        if (candidate / "etc" / "vs-tools").is_dir():
            return candidate
    raise NotFoundError(
        "cannot find the samples (etc/vs-tools) in " + ", ".join(str(c) for c in candidates)
    )


def plan_setup(source: Path, etc_dir: Path, unit_dir: Path) -> list[tuple[Path, Path, str]]:
    """``(from, to, verb)`` for every file: samples refreshed, configs only where missing."""
    actions: list[tuple[Path, Path, str]] = []
    for sample in sorted((source / "etc" / "vs-tools").iterdir()):
        if not sample.is_file():
            continue
        name = sample.name.removesuffix(".sample")
        actions.append((sample, etc_dir / f"{name}.sample", "refreshed"))
        if sample.name.endswith(".sample"):
            continue  # examples only (guest.conf.sample): never a live file
        target = etc_dir / name
        actions.append((sample, target, "kept" if target.exists() else "installed"))
    units = source / "systemd"
    if units.is_dir():
        for unit in sorted(units.iterdir()):
            if unit.suffix in (".service", ".target", ".timer"):
                actions.append((unit, unit_dir / unit.name, "refreshed"))
    return actions


def plugin_source() -> Path:
    """The Munin plugin: the standalone module vstools/munin.py."""

    return Path(munin.__file__).resolve()


def plugin_conf(state_dir: Path) -> str:
    """The plugin-conf.d entry that gives the vs_* plugins STATE_DIR (``env.VS_STATE_DIR``)."""
    header = "# Written by vs-setup: where vs-monitor keeps its figures."
    return f"{header}\n[vs_*]\nenv.VS_STATE_DIR {state_dir}\n"


def plan_munin(
    source: Path, munin_dir: Path, lib_dir: Path, conf_dir: Path, state_dir: Path
) -> list[tuple[Path, Path, str]]:
    """``(from, to, verb)``: the plugin's copy, a link for every graph of the wildcard plugin,
    its plugin-conf.d entry; or one ``skipped`` row (the plugin directory itself) when
    munin-node is not there."""

    if not munin_dir.is_dir():
        return [(munin_dir, munin_dir, "skipped")]
    plugin = lib_dir / "vs_"
    if not plugin.exists():
        verb = "installed"
    else:
        verb = "kept" if plugin.read_bytes() == source.read_bytes() else "refreshed"
    actions = [(source, plugin, verb)]
    for graph in GRAPHS:
        link = munin_dir / f"vs_{graph}"
        if link.is_symlink():
            verb = "kept" if link.resolve() == plugin.resolve() else "refreshed"
        else:
            # An administrator's own file of that name is never replaced.
            verb = "kept" if link.exists() else "installed"
        actions.append((plugin, link, verb))
    if conf_dir.is_dir():
        conf = conf_dir / "vs-tools"
        verb = "kept" if conf.exists() else "installed"
        actions.append((state_dir, conf, verb))
    return actions


def _munin_step(source: Path, target: Path, verb: str) -> Step:
    if target.name == "vs-tools":
        return Step(f"{verb} {target}", partial(_write, target, plugin_conf(source), 0o644))
    if target.name == "vs_":
        return Step(f"{verb} {target}", partial(_write, target, source.read_bytes(), 0o755))
    return Step(f"{verb} {target} -> {source}", partial(_link, source, target))


def handle(ctx: Context) -> int:
    """Run vs-setup: install the samples, the units and the Munin plugin and close ROOT_DIR (nothing
    with --dry-run); prints a line per file with what was, or would be, done."""

    etc_dir = Path(ctx.args.etc_dir) if ctx.args.etc_dir else ctx.paths.etc_dir
    source_dir = find_source(ctx.args.source)
    actions = plan_setup(source_dir, etc_dir, Path(ctx.args.unit_dir))
    munin = plan_munin(
        plugin_source(),
        Path(ctx.args.munin_dir),
        Path(ctx.args.munin_lib),
        Path(ctx.args.munin_conf_dir),
        ctx.paths.state_dir,
    )
    root_dir = ctx.paths.root_dir
    closed = root_dir.is_dir() and (root_dir.stat().st_mode & 0o777) == ROOT_DIR_MODE
    root_verb = "kept" if closed else "secured"
    steps = [
        Step(f"{verb} {target}", partial(_install, source, target))
        for source, target, verb in actions
        if verb != "kept"
    ] + [
        _munin_step(source, target, verb)
        for source, target, verb in munin
        if verb in ("installed", "refreshed")
    ]
    if root_verb == "secured":
        steps.append(Step(f"secured {root_dir} (mode 0700)", partial(secure_root_dir, root_dir)))
    actions += [*munin, (root_dir, root_dir, root_verb)]
    if not ctx.dry_run:
        with operation("vs-setup"):
            apply_steps(steps)
    rows = [
        {"file": str(target), "action": verb if not ctx.dry_run else f"would be {verb}"}
        for _, target, verb in actions
    ]
    ctx.emit_rows(rows, ("action", "file"))
    return 0


def unit_text(text: str, bindir: str) -> str:
    """A unit with its ExecStart/ExecStop pointing at where the vs-* commands are installed."""
    return text.replace("/usr/local/bin/", bindir.rstrip("/") + "/")


def _install(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    data = source.read_bytes()
    if source.parent.name == "systemd":
        data = unit_text(data.decode(), str(Path(sys.argv[0]).resolve().parent)).encode()
    atomic_write(target, data, mode=0o644)


def _write(target: Path, data: str | bytes, mode: int) -> None:
    target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    atomic_write(target, data, mode=mode)


def _link(plugin: Path, link: Path) -> None:
    """Point ``link`` at ``plugin``: a new symlink beside it renamed over it, so the name is
    never missing or half made."""
    temporary = link.with_name(f".{link.name}.vs-setup")
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(plugin)
    temporary.rename(link)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of vs-setup: returns its exit status."""
    return run_command(build_parser(), handle, argv)
