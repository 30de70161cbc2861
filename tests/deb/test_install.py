"""The Debian package, installed the way an administrator does: `make deb`, then `apt install` into
a clean Debian 12 made by debootstrap; the installed commands check the configuration, list
their functions, create and start a busybox guest, monitor it for Munin and Prometheus; `man`
and Tab completion work; `apt purge` leaves nothing but the administrator's files."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deb.system import System, debian_system

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.deb

# After the purge, besides what was there before the package came: the package manager's own
# records and caches, and what the administrator made (guests, a note, a template archive, the
# collector directory node_exporter's package would have made).
ALLOWED_AFTER_PURGE = (
    r"/var/lib/(dpkg|apt)(/.*)?",
    r"/var/cache/(apt|man|debconf|ldconfig)(/.*)?",
    r"/var/log(/.*)?",
    r"/etc/ld\.so\.cache",
    r"/etc/vservers(/.*)?",
    r"/var/lib/vservers(/.*)?",
    r"/etc/vs-tools(/notes\.txt)?",
    r"/root/busybox\.tar\.gz",
    r"/var/lib/prometheus(/node-exporter)?",
    r"/tmp/.*",
)


@pytest.fixture(scope="module")
def package() -> Path:
    """The .deb `make deb` builds from this tree (VS_DEB names one built already)."""
    if os.environ.get("VS_DEB"):
        return Path(os.environ["VS_DEB"])
    env = {**os.environ, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    done = subprocess.run(
        ["make", "deb"], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "lintian --fail-on error" in done.stdout  # lintian ran, and passed (no error)
    [deb] = sorted(ROOT.glob("vs-tools_*_all.deb"))
    return deb


@pytest.fixture
def system(tmp_path: Path, run_prefix: str) -> Iterator[System]:
    workdir = tmp_path / f"{run_prefix}-debian"
    workdir.mkdir()
    with debian_system(workdir, f"{run_prefix}-deb") as made:
        yield made


def _fields(deb: Path, *names: str) -> str:
    out = subprocess.run(
        ["dpkg-deb", "-f", str(deb), *names], capture_output=True, text=True, check=True
    ).stdout
    return ", ".join(line.split(":", 1)[-1].strip() for line in out.splitlines() if line.strip())


def _complete(system: System, *words: str) -> list[str]:
    """What Tab offers for the last of ``words``, with the completion bash-completion loads
    for the command on its first Tab (a shell script: no Python starts)."""
    script = (
        ". /usr/share/bash-completion/bash_completion\n"
        f'__load_completion "{words[0]}"\n'
        f"COMP_WORDS=({' '.join(repr(w) for w in words)})\n"
        "COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))\n"
        'f=$(complete -p "${COMP_WORDS[0]}" | sed "s/.* -F \\([^ ]*\\) .*/\\1/")\n'
        '"$f"\n'
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    return system.run("bash", "-c", script).stdout.split()


def test_upgrades_never_stop_or_start_the_guests(package: Path, tmp_path: Path) -> None:
    """The maintainer scripts: vs-guests.service is left alone by an install and an upgrade
    (stopping it stops every guest), stopped on removal; the monitor is restarted after an
    upgrade only if it runs, and stopped on removal."""
    subprocess.run(["dpkg-deb", "-e", str(package), str(tmp_path / "ctl")], check=True)
    scripts = {p.name: p.read_text() for p in (tmp_path / "ctl").iterdir()}
    actions = {
        name: re.findall(r"deb-systemd-invoke (\S+) ([^>]*)", text)
        for name, text in scripts.items()
        if name in ("preinst", "postinst", "prerm", "postrm")
    }
    guests = [(n, a) for n, found in actions.items() for a, u in found if "vs-guests" in u]
    assert guests == [("prerm", "stop")], actions
    assert re.search(r'"\$1" = remove \] .*\n\s*deb-systemd-invoke stop', scripts["prerm"])
    monitor = [(n, a) for n, found in actions.items() for a, u in found if "vs-monitor" in u]
    assert sorted(monitor) == [("postinst", "try-restart"), ("prerm", "stop")], actions


def test_apt_install_use_and_purge(package: Path, system: System, run_prefix: str) -> None:
    guest = f"{run_prefix}web"
    # The dependencies first, so that the purge can be compared with the system before the
    # package: only vs-tools itself comes and goes below.
    system.run("apt-get", "update", "-qq", net=False, timeout=600)
    system.run("apt-get", "satisfy", "-y", "-q", _fields(package, "Depends", "Recommends"),
               net=False, timeout=900)  # fmt: skip
    before = system.listing()
    (system.path("/tmp") / package.name).write_bytes(package.read_bytes())
    done = system.run("apt-get", "install", "-y", "-q", f"/tmp/{package.name}", net=False)
    assert "Setting up vs-tools" in done.stdout

    # Where Debian puts things.
    files = set(system.run("dpkg", "-L", "vs-tools").stdout.split())
    for path in (
        "/usr/sbin/vs-create",
        "/usr/sbin/vs-monitor",
        "/lib/systemd/system/vs-guest@.service",
        "/lib/systemd/system/vs-guests.service",
        "/usr/share/munin/plugins/vs_",
        "/usr/share/man/man8/vs-create.8.gz",
        "/usr/share/man/man5/vs-tools.conf.5.gz",
        "/usr/share/bash-completion/completions/vs-control",
        "/usr/share/zsh/vendor-completions/_vs-control",
    ):
        assert path in files, path
    conffiles = system.run("dpkg-query", "-W", "-f=${Conffiles}", "vs-tools").stdout
    assert "/etc/vs-tools/vs-tools.conf" in conffiles and "/etc/vs-tools/networks.conf" in conffiles
    wants = system.path("/etc/systemd/system/multi-user.target.wants")
    assert (wants / "vs-guests.service").is_symlink()  # enabled guests start at boot
    assert not (wants / "vs-monitor.service").exists()  # the admin chooses the monitor
    unit = system.path("/lib/systemd/system/vs-guest@.service").read_text()
    assert "ExecStart=/usr/sbin/vs-control " in unit and "/usr/local" not in unit

    # Every command answers --help; the configuration as shipped is valid.
    for command in sorted(p.name for p in system.path("/usr/sbin").glob("vs-*")):
        assert "usage: " + command in system.run(command, "--help").stdout
    assert system.run("vs-check").stdout == ""
    assert "busybox_template" in system.run("vs-fonctions", "--list").stdout

    # man vs-create is the --help of the installed vs-create.
    manual = system.run("man", "vs-create").stdout
    assert "vs-create - build a guest" in manual
    options = set(re.findall(r"(?<![\w-])--?[a-z][\w-]*", system.run("vs-create", "--help").stdout))
    options -= {"-h", "--help"}  # argparse's own; the page documents what the command adds
    assert options and not [o for o in options if o not in manual]
    assert "PROMETHEUS_TEXTFILE_DIR" in system.run("man", "5", "vs-tools.conf").stdout

    # The administrator's setup: edits to conffiles, a file of their own, a template.
    etc = system.path("/etc/vs-tools")
    with open(etc / "vs-tools.conf", "a") as conf:
        conf.write(f"NETWORK=none\nCGROUP_PARENT={run_prefix}-deb\nSTOP_TIMEOUT=5\n")
    (etc / "networks.conf").write_text("0,198.51.100.0/24,198.51.100.1\n")
    (etc / "notes.txt").write_text("the admin's own file\n")
    system.run("vs-fonctions", "busybox_template", "/root/busybox.tar.gz")
    with open(etc / "create.conf", "a") as conf:
        conf.write("DEFAULT_TEMPLATE=/root/busybox.tar.gz\n")
    system.path("/var/lib/prometheus/node-exporter").mkdir(parents=True)

    # A guest, with the installed commands and Debian's own libraries.
    system.run("vs-create", "--name", guest, "--interface", "198.51.100.10", "--rss", "64")
    system.run("vs-control", "--name", guest, "--start")
    assert f":{guest}:disabled:running" in system.run("vs-control", "--all").stdout
    assert "init" in system.run("vs-exec", guest, "--", "ps").stdout
    status = system.run("vs-exec", guest, "--", "cat", "/proc/self/status").stdout
    assert re.search(r"^Seccomp:\s+2$", status, re.MULTILINE), status  # python3-seccomp's filter

    # Monitored once: Munin's plugin and the Prometheus textfile see it.
    assert f":{guest}:running" in system.run("vs-monitor", "--all", "--once").stdout
    prom = system.path("/var/lib/prometheus/node-exporter/vs_tools.prom").read_text()
    host = system.run("vs-control", "--all").stdout.split(":", 1)[0]
    assert f'vs_guest_state{{host="{host}",guest="{guest}",state="running"}} 1' in prom
    assert re.search(rf'vs_guest_memory_limit_bytes{{[^}}]*guest="{guest}"}} 67108864', prom)
    plugin = system.sh("ln -sf /usr/share/munin/plugins/vs_ /tmp/vs_rss && /tmp/vs_rss").stdout
    assert re.match(rf"{guest}\.value \d+", plugin), plugin

    # Tab: options from the parser, guest names from /etc/vservers, hosts from slaves.conf.
    (etc / "slaves.conf").write_text("# the pool\nvst-slave1:compress\nvst-slave2\n")
    assert _complete(system, "vs-control", "--sta") == ["--start"]
    assert _complete(system, "vs-control", "--name", run_prefix) == [guest]
    assert _complete(system, "vs-move", "--dst_host", "vst-sl") == ["vst-slave1", "vst-slave2"]

    system.run("vs-control", "--name", guest, "--stop")
    assert f":{guest}:disabled:stopped" in system.run("vs-control", "--all").stdout

    # Reinstalled (as an upgrade would): the administrator's edits to conffiles stay.
    system.run("apt-get", "install", "-y", "-q", "--reinstall", f"/tmp/{package.name}", net=False)
    assert f"CGROUP_PARENT={run_prefix}-deb" in (etc / "vs-tools.conf").read_text()

    # Purge: nothing of the package is left, the administrator's files are.
    system.run("apt-get", "purge", "-y", "-q", "vs-tools", net=False)
    left = sorted(
        path
        for path in system.listing() - before
        if not any(re.fullmatch(pattern, path) for pattern in ALLOWED_AFTER_PURGE)
    )
    assert left == [], left
    assert system.path(f"/etc/vservers/{guest}/guest.conf").exists()
    assert system.path("/etc/vs-tools/notes.txt").exists()
    assert not system.path("/etc/vs-tools/vs-tools.conf").exists()
    assert not system.path("/var/lib/vs-tools").exists()
