"""The Munin plugin vs_: installed as an administrator would (a symlink to the shipped plugin in
a plugin directory, a plugin-conf.d entry), run by Debian's munin-run and
munin-node-configure --suggest (as Munin's unprivileged plugin user) on the figures vs-monitor
wrote for a real running guest. Nothing is left in /etc/munin: every path is a temporary one."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.guests import Host
from vstools.cli.vs_setup import plugin_conf
from vstools.monitor.munin import GRAPHS, read_figures, render_config, render_values

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PLUGIN = ROOT / "vstools" / "monitor" / "munin.py"


def test_values_are_unknown_for_stopped_or_stale_guests(tmp_path: Path) -> None:
    now = time.time()
    figures = {"time": now, "running": True, "rss_mb": 2.5, "processes": 4, "cpu_s": 1.234}
    figures |= {"disk_mb": 3, "tmpfs_mb": 0, "load": [0.5, 0.25, 0.125]}
    for name, data in {
        "web-1": {"guest": "web-1", "pooling_s": 60, "figures": figures},
        "old": {"guest": "old", "pooling_s": 60, "figures": dict(figures, time=now - 3600)},
        "off": {"guest": "off", "pooling_s": 60, "figures": dict(figures, running=False)},
    }.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(data))
    found = read_figures(tmp_path, now)
    assert render_values("rss", found) == ("off.value U\nold.value U\nweb_1.value 2621440\n")
    assert render_values("cpu", found).endswith("web_1.value 123\n")
    assert render_values("load", found).endswith("web_1.value 0.2500\n")
    config = render_config("cpu", sorted(found))
    assert "web_1.label web-1\n" in config and "web_1.type DERIVE\n" in config


@pytest.fixture
def munin_dirs(run_prefix: str) -> Iterator[Path]:
    """A world-readable temporary tree (Munin runs plugins as nobody)."""
    if shutil.which("munin-run") is None:
        pytest.fail("munin-run is not installed (make deps installs munin-node)")
    top = Path(tempfile.mkdtemp(prefix=f"{run_prefix}-munin-"))
    top.chmod(0o755)
    yield top
    shutil.rmtree(top)


@pytest.mark.privileged
@pytest.mark.e2e
def test_munin_run_and_suggest_on_a_running_guest(host: Host, munin_dirs: Path) -> None:
    host.define("web-1", "198.51.100.12", rss=64, proc=32)
    host.run("vs-control", "--name", "web-1", "--start")
    state_dir = munin_dirs / "state"
    env = dict(host.env, VS_STATE_DIR=str(state_dir))
    (host.guests_dir / "web-1" / "monitor.conf").write_text("MONITOR_POOLING=1\n")
    conf = Path(host.env["VS_ETC_DIR"]) / "vs-tools.conf"
    conf.write_text(conf.read_text() + "SMTP_HOST=127.0.0.1\nSMTP_PORT=9\nSYSLOG=no\n")
    once = subprocess.run(
        [str(BIN / "vs-monitor"), "--once"], env=env, capture_output=True, text=True, check=False
    )
    assert once.stdout == "vsh-test:web-1:running:-\n", once.stderr

    lib, plugins, conf_d = (munin_dirs / d for d in ("lib", "plugins", "plugin-conf.d"))
    for directory in (lib, plugins, conf_d):
        directory.mkdir()
    # The plugin as vs-setup installs it: a standalone copy, whatever the checkout's path
    # (which may be under a 0700 directory that Munin's user cannot reach).
    (lib / "vs_").write_bytes(PLUGIN.read_bytes())
    (lib / "vs_").chmod(0o755)
    (conf_d / "vs-tools").write_text(plugin_conf(state_dir))
    dirs = ["--servicedir", str(plugins), "--sconfdir", str(conf_d)]
    munin_env = {"PATH": os.environ["PATH"]}

    def munin(*argv: str) -> str:
        result = subprocess.run(
            list(argv), env=munin_env, capture_output=True, text=True, timeout=60, check=False
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    suggest = munin("munin-node-configure", "--libdir", str(lib), *dirs, "--suggest")
    assert "vs_" in suggest and "+rss" in suggest and "+load" in suggest
    shell = munin("munin-node-configure", "--libdir", str(lib), *dirs, "--shell")
    links = sorted(line.split("/")[-1].strip("'") for line in shell.splitlines())
    assert links == sorted(f"vs_{g}" for g in GRAPHS)
    for graph in GRAPHS:  # installed by symlink, as --shell says
        (plugins / f"vs_{graph}").symlink_to(lib / "vs_")
    values = {g: munin("munin-run", *dirs, f"vs_{g}") for g in GRAPHS}
    rss = int(values["rss"].split()[1])
    assert values["rss"].startswith("web_1.value ") and 0 < rss < 64 << 20
    assert int(values["proc"].split()[1]) >= 1  # the guest's init at least
    assert values["cpu"].startswith("web_1.value ")
    assert float(values["load"].split()[1]) >= 0
    config = munin("munin-run", *dirs, "vs_rss", "config")
    assert "graph_title Memory of the guests" in config and "web_1.label web-1" in config
    assert munin("munin-run", *dirs, "vs_rss", "autoconf") == "yes\n"
    # The plugin runs unprivileged: a state directory only root may read is out of its reach.
    state_dir.chmod(0o700)
    assert munin("munin-run", *dirs, "vs_rss", "autoconf").startswith("no ")


@pytest.mark.privileged
def test_vs_setup_links_the_plugin(etc_tree: dict[str, str], munin_dirs: Path) -> None:
    """vs-setup links vs_ as every graph into munin-node's plugin directory (a temporary one
    here, never /etc/munin), idempotently, and Munin runs the links it made."""
    from tests.cli_helpers import invoke

    plugins, lib, conf_d = (munin_dirs / d for d in ("plugins", "lib", "plugin-conf.d"))
    base = ["--etc-dir", etc_tree["VS_ETC_DIR"], "--unit-dir", str(munin_dirs / "units")]
    base += ["--munin-dir", str(plugins), "--munin-lib", str(lib)]
    base += ["--munin-conf-dir", str(conf_d)]
    conf_d.mkdir()
    installed = lib / "vs_"

    def setup(*extra: str) -> dict[str, str]:
        outcome = invoke("vs-setup", [*base, *extra], etc_tree)
        assert outcome.code == 0, outcome.err
        rows = [line.split(":", 1)[::-1] for line in outcome.out.splitlines()]
        ours = (str(plugins), str(lib), str(conf_d))
        return {file: action for file, action in rows if file.startswith(ours)}

    links = {str(plugins / f"vs_{graph}") for graph in GRAPHS}
    made = {*links, str(installed), str(conf_d / "vs-tools")}
    # No munin-node (no plugin directory): skipped, nothing made.
    assert setup() == {str(plugins): "skipped"}
    assert not plugins.exists() and not lib.exists()
    plugins.mkdir()
    assert setup("--dry-run") == dict.fromkeys(made, "would be installed")
    assert list(plugins.iterdir()) == []
    assert setup() == dict.fromkeys(made, "installed")
    assert {str(p) for p in plugins.iterdir()} == links
    assert all(Path(link).resolve() == installed for link in links)
    assert installed.read_bytes() == PLUGIN.read_bytes() and installed.stat().st_mode & 0o755
    assert "env.VS_STATE_DIR" in (conf_d / "vs-tools").read_text()
    # A second run changes nothing; a link left by an old install is refreshed; an
    # administrator's own file is kept as it is.
    assert setup() == dict.fromkeys(made, "kept")
    (plugins / "vs_cpu").unlink()
    (plugins / "vs_cpu").symlink_to("/nonexistent/vs_")
    (plugins / "vs_load").unlink()
    (plugins / "vs_load").write_text("#!/bin/sh\necho mine\n")
    assert setup() == dict(dict.fromkeys(made, "kept"), **{str(plugins / "vs_cpu"): "refreshed"})
    assert (plugins / "vs_cpu").resolve() == installed
    assert (plugins / "vs_load").read_text() == "#!/bin/sh\necho mine\n"
    assert sorted(p.name for p in plugins.iterdir()) == sorted(f"vs_{g}" for g in GRAPHS)

    # Munin runs what vs-setup linked (as its unprivileged plugin user).
    result = subprocess.run(
        ["munin-run", "--servicedir", str(plugins), "vs_rss", "config"],
        env={"PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "graph_title Memory of the guests" in result.stdout, result.stdout + result.stderr
