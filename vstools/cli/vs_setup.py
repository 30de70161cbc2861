"""vs-setup: install the sample configuration and the systemd units on a host."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path

from vstools.cli.common import Context, new_parser, run_command
from vstools.errors import NotFoundError
from vstools.paths import DEFAULT_MUNIN_PLUGIN_DIR, DEFAULT_UNIT_DIR

DESCRIPTION = """\
Install the sample configuration files into the configuration directory and the systemd units
into the unit directory. Every sample is written as NAME.sample (refreshed on each run, like the
original's *.conf.sample) and as NAME only where no such file exists: an administrator's file is
never overwritten. When munin-node's plugin directory exists, links the Munin plugin vs_ there
as vs_rss, vs_proc, vs_cpu, vs_disk, vs_tmpfs and vs_load (a link already right is kept, a link
elsewhere is refreshed, a file that is not a link is never replaced). Prints one line per file:
installed, refreshed, kept or skipped."""


def build_parser() -> argparse.ArgumentParser:
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


def find_plugin(source: Path) -> Path | None:
    """The shipped Munin plugin: ``munin/vs_`` of an installed share/vs-tools, ``bin/vs_`` of a
    checkout."""
    for candidate in (source / "munin" / "vs_", source / "bin" / "vs_"):
        if candidate.is_file():
            return candidate.resolve()
    return None


def plan_munin(plugin: Path | None, munin_dir: Path) -> list[tuple[Path, Path, str]]:
    """``(plugin, link, verb)`` for every graph of the wildcard plugin, or one ``skipped`` row
    (the plugin directory itself) when munin-node is not there or the plugin was not found."""
    from vstools.munin import GRAPHS

    if plugin is None or not munin_dir.is_dir():
        return [(munin_dir, munin_dir, "skipped")]
    actions = []
    for graph in GRAPHS:
        link = munin_dir / f"vs_{graph}"
        if link.is_symlink():
            verb = "kept" if link.resolve() == plugin else "refreshed"
        else:
            # An administrator's own file of that name is never replaced.
            verb = "kept" if link.exists() else "installed"
        actions.append((plugin, link, verb))
    return actions


def handle(ctx: Context) -> int:
    from vstools.journal import operation
    from vstools.plan import Step, apply_steps

    etc_dir = Path(ctx.args.etc_dir) if ctx.args.etc_dir else ctx.paths.etc_dir
    source_dir = find_source(ctx.args.source)
    actions = plan_setup(source_dir, etc_dir, Path(ctx.args.unit_dir))
    links = plan_munin(find_plugin(source_dir), Path(ctx.args.munin_dir))
    steps = [
        Step(f"{verb} {target}", partial(_install, source, target))
        for source, target, verb in actions
        if verb != "kept"
    ] + [
        Step(f"{verb} {link} -> {plugin}", partial(_link, plugin, link))
        for plugin, link, verb in links
        if verb in ("installed", "refreshed")
    ]
    actions += links
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
    from vstools.fsutil import atomic_write

    target.parent.mkdir(parents=True, exist_ok=True)
    data = source.read_bytes()
    if source.parent.name == "systemd":
        data = unit_text(data.decode(), str(Path(sys.argv[0]).resolve().parent)).encode()
    atomic_write(target, data, mode=0o644)


def _link(plugin: Path, link: Path) -> None:
    """Point ``link`` at ``plugin``: a new symlink beside it renamed over it, so the name is
    never missing or half made."""
    temporary = link.with_name(f".{link.name}.vs-setup")
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(plugin)
    temporary.rename(link)


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(build_parser(), handle, argv)
