"""Tooling as tests (STYLE.md §10): ruff lint and format, mypy strict, the import layers, the
one-door rules and the lazy import of heavy modules."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# Layers, bottom first: a module may import its own layer and those below, never above.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "pure",
        (
            "vstools",
            "vstools.errors",
            "vstools.names",
            "vstools.config",
            "vstools.paths",
            "vstools.plan",
            "vstools.serialize",
            "vstools.fwmodel",
            "vstools.fwrender",
            "vstools.alerts",
        ),
    ),
    (
        "host",
        (
            "vstools.run",
            "vstools.fsutil",
            "vstools.rootfs",
            "vstools.journal",
            "vstools.hostconfig",
            "vstools.cgroup",
            "vstools.cgrouplayout",
            "vstools.netlink",
            "vstools.syscalls",
            "vstools.sandbox",
            "vstools.templates",
            "vstools.namespaces",
            "vstools.storage",
            "vstools.storagelvm",
            "vstools.ssh",
            "vstools.mail",
        ),
    ),
    (
        "guest",
        (
            "vstools.guest",
            "vstools.guestexec",
            "vstools.create",
            "vstools.limits",
            "vstools.firewall",
            "vstools.fwiptc",
            "vstools.netctl",
            "vstools.network",
            "vstools.supervisor",
            "vstools.gueststate",
        ),
    ),
    (
        "top",
        (
            "vstools.functions",
            "vstools.cli",
            "vstools.monitor",
            "vstools.monitorsample",
            "vstools.monitordaemon",
            "vstools.munin",
            "vstools.pool",
        ),
    ),
]

# One door each (STYLE.md "What that means here" §3): who may import these modules.
DOORS = {
    "subprocess": {"vstools.run"},
    "ctypes": {"vstools.rootfs", "vstools.syscalls"},
    "pyroute2": {"vstools.netlink"},
    "smtplib": {"vstools.mail"},
    "sh": {"vstools.ssh"},
    "iptc": {"vstools.fwiptc"},
}
# The pure layer never touches the host.
PURE_FORBIDDEN = {
    "subprocess",
    "ctypes",
    "pyroute2",
    "smtplib",
    "socket",
    "fcntl",
    "sh",
    "psutil",
    "shutil",
    "tempfile",
}
HEAVY = ("pyroute2", "sh", "apscheduler", "psutil")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _layer_of(module: str) -> int:
    best, best_len = -1, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    return best


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every module imported anywhere in the file, lazy imports inside functions included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


SOURCES = sorted((ROOT / "vstools").rglob("*.py"))


def test_every_module_has_a_layer() -> None:
    missing = [_module_name(p) for p in SOURCES if _layer_of(_module_name(p)) < 0]
    assert not missing, f"add these to LAYERS in {__file__}: {missing}"


def test_imports_only_go_downward() -> None:
    wrong = []
    for path in SOURCES:
        module = _module_name(path)
        layer = _layer_of(module)
        for line, imported in _imports(path):
            if imported.startswith("vstools") and _layer_of(imported) > layer:
                wrong.append(
                    f"{path.relative_to(ROOT)}:{line}: {module} ({LAYERS[layer][0]})"
                    f" imports {imported} ({LAYERS[_layer_of(imported)][0]})"
                )
    assert not wrong, "\n".join(wrong)


def test_one_door_each_and_a_pure_bottom_layer() -> None:
    wrong = []
    for path in SOURCES:
        module = _module_name(path)
        pure = _layer_of(module) == 0
        for line, imported in _imports(path):
            top = imported.split(".")[0]
            if top in DOORS and module not in DOORS[top]:
                wrong.append(f"{path.relative_to(ROOT)}:{line}: {top} belongs to {DOORS[top]}")
            if pure and top in PURE_FORBIDDEN:
                wrong.append(f"{path.relative_to(ROOT)}:{line}: pure layer imports {top}")
    assert not wrong, "\n".join(wrong)


COMMANDS = sorted(p.stem for p in (ROOT / "vstools" / "cli").glob("vs_*.py"))


@pytest.mark.parametrize("command", COMMANDS)
def test_commands_do_not_pay_for_heavy_imports(command: str) -> None:
    """`vs-control --name x` must not pay for netlink (STYLE.md §9): importing a command and
    building its parser loads none of pyroute2, sh, apscheduler or psutil."""
    code = (
        f"import sys; from vstools.cli import {command} as m; m.build_parser();"
        f" print(','.join(h for h in {HEAVY!r} if h in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert result.stdout.strip() == ""


def _tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        found = shutil.which(name)
        if found is None:
            pytest.fail(f"{name} is not installed (make venv installs it)")
        return found
    return str(path)


def test_ruff_lint() -> None:
    result = subprocess.run(
        [_tool("ruff"), "check", "--output-format", "concise", "."],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format() -> None:
    result = subprocess.run(
        [_tool("ruff"), "format", "--check", "."],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict() -> None:
    result = subprocess.run([_tool("mypy")], cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_status_commands_do_not_load_the_guest_runtime(etc_tree: dict[str, str]) -> None:
    """Showing state (vs-control --all, vs-limit, vs-stats) reads the lock and state.json; it
    must not pay for the sandbox and libseccomp that only starting a guest needs."""
    code = (
        "import sys, contextlib, io\n"
        "from vstools.cli import vs_control, vs_limit, vs_stats\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    vs_control.main(['--all']); vs_limit.main(['--all']); vs_stats.main([])\n"
        "print(','.join(m for m in ('pyseccomp', 'vstools.sandbox', 'vstools.supervisor')"
        " if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env=etc_tree,
    )
    assert result.stdout.strip() == ""
