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

# The package table, bottom first: a module may import its own package and those below, never
# above (docs/architecture.md draws it). One line per package.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("ground", ("vstools", "vstools.errors", "vstools.names", "vstools.paths", "vstools.plan",
                "vstools.serialize", "vstools.config")),
    ("host", ("vstools.host",)),
    ("storage", ("vstools.storage",)),
    ("runtime", ("vstools.runtime",)),
    ("net", ("vstools.net",)),
    ("firewall", ("vstools.firewall",)),
    ("guest", ("vstools.guest",)),
    ("monitor", ("vstools.monitor",)),
    ("pool", ("vstools.backup", "vstools.pkg", "vstools.pool")),
    ("top", ("vstools.functions", "vstools.cli")),
]  # fmt: skip
# The few exceptions: modules of a higher package that only compute, held to the ground's rule.
PURE_MODULES = (
    "vstools.net.plan",
    "vstools.firewall.model",
    "vstools.firewall.render",
    "vstools.firewall.render_ipt",
    "vstools.monitor.alerts",
)
# In-house imports go to the top of a module; inside a function only where a command must not pay
# for a whole subsystem it may not use (each import named here, with the reason at the import).
LAZY_IN_HOUSE = {
    ("vstools.cli.vs_control", "vstools.guest.start"),
    ("vstools.cli.vs_control", "vstools.guest.stop"),
    ("vstools.cli.vs_control", "vstools.guest.batch"),
    ("vstools.cli.vs_monitor", "vstools.monitor.daemon"),
    ("vstools.cli.vs_fonctions", "vstools.functions"),
    ("vstools.pkg.driver", "vstools.guest.start"),  # only vs-pkg --start-stopped starts guests
    ("vstools.pkg.driver", "vstools.guest.stop"),
    ("vstools.functions", "vstools.guest.start"),  # receive_start*: every call would pay
    ("vstools.cli.vs_net", "vstools.pkg.session"),  # --fw up only: a killed vs-pkg's leftovers
    # Every command writes with fsutil; only the monitor's swap_write needs ctypes (renameat2).
    ("vstools.host.fsutil", "vstools.host.syscalls"),
    # A start or stop without a network does not pay for the network and firewall stacks.
    *(
        (module, imported)
        for module in ("vstools.guest.start", "vstools.guest.stop")
        for imported in (
            "vstools.firewall.host",
            "vstools.firewall.model",
            "vstools.net.plan",
            "vstools.net.routed",
            "vstools.plan",
        )
    ),
    # Every command loads the host's configuration; showing state (vs-control --all) reads
    # guest.conf alone and does not pay for the other files' parsers (issue 17).
    *(
        ("vstools.host.hostconfig", f"vstools.config.{imported}")
        for imported in ("create", "files", "firewall", "monitor", "networks")
    ),
}

# One door each (STYLE.md "What that means here" §3): who may import these modules.
DOORS = {
    "subprocess": {"vstools.host.run"},
    "ctypes": {"vstools.host.rootfs", "vstools.host.syscalls", "vstools.host.nftlib"},
    "pyroute2": {"vstools.host.netlink"},
    "smtplib": {"vstools.host.mail"},
    "sh": {"vstools.host.ssh"},
    "iptc": {"vstools.firewall.iptc"},
    "pyseccomp": {"vstools.runtime.sandbox"},
    "seccomp": {"vstools.runtime.sandbox"},  # Debian's python3-seccomp, the same API
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
HEAVY = ("pyroute2", "sh", "apscheduler", "psutil", "pyseccomp", "seccomp", "sqlite3")


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
            # "from vstools.x import y" may import the module vstools.x.y
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return [(line, name) for line, name in found if not name.startswith("vstools") or _known(name)]


def _known(module: str) -> bool:
    return module in MODULES


def _lazy_imports(path: Path) -> list[tuple[int, str]]:
    """In-house modules imported inside a function (TYPE_CHECKING blocks are not imports)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for sub in ast.walk(node):
                if isinstance(sub, ast.ImportFrom) and (sub.module or "").startswith("vstools"):
                    found.append((sub.lineno, str(sub.module)))
    return found


SOURCES = sorted((ROOT / "vstools").rglob("*.py"))
MODULES = {_module_name(path) for path in SOURCES}


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


def test_no_circle_anywhere() -> None:
    """The module graph (lazy imports included) has no cycle, inside a package or across."""
    graph = {
        _module_name(path): {name for _, name in _imports(path) if name in MODULES}
        for path in SOURCES
    }
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 on the path, 2 done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module] - {module}):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_in_house_imports_are_at_the_top() -> None:
    wrong = []
    for path in SOURCES:
        module = _module_name(path)
        for line, imported in _lazy_imports(path):
            if (module, imported) not in LAZY_IN_HOUSE:
                wrong.append(f"{path.relative_to(ROOT)}:{line}: {imported} imported in a function")
    assert not wrong, "\n".join(wrong)


def test_one_door_each_and_a_pure_bottom_layer() -> None:
    wrong = []
    for path in SOURCES:
        module = _module_name(path)
        pure = _layer_of(module) == 0 or module in PURE_MODULES
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


def _loaded_by(status: str, modules: tuple[str, ...], env: dict[str, str]) -> list[str]:
    """Which of ``modules`` a fresh interpreter has loaded after running ``status`` (commands'
    ``main`` calls, their output discarded)."""
    code = (
        "import sys, contextlib, io\n"
        "from vstools.cli import vs_control, vs_limit, vs_stats\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    {status}\n"
        f"print(','.join(m for m in {modules!r} if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT, env=env
    )
    return [m for m in result.stdout.strip().split(",") if m]


def test_status_commands_do_not_load_the_guest_runtime(etc_tree: dict[str, str]) -> None:
    """Showing state (vs-control --all, vs-limit, vs-stats) reads the lock and state.json; it
    must not pay for the supervisor, the sandbox and libseccomp that only starting a guest
    needs, nor for netlink."""
    status = "vs_control.main(['--all']); vs_limit.main(['--all']); vs_stats.main([])"
    runtime = (
        "pyseccomp",
        "seccomp",
        "pyroute2",
        "vstools.runtime.sandbox",
        "vstools.runtime.supervisor",
    )
    assert _loaded_by(status, runtime, etc_tree) == []


def test_status_loads_only_what_showing_needs(etc_tree: dict[str, str]) -> None:
    """`vs-control --all` (issue 17: within 3x of the interpreter's start) parses guest.conf
    alone and journals nothing: the other files' parsers, syslog's handler (socket, pickle)
    and json stay unloaded."""
    unneeded = (
        "vstools.config.create",
        "vstools.config.files",
        "vstools.config.firewall",
        "vstools.config.pool",
        "logging.handlers",
        "socket",
        "json",
        "difflib",
    )
    assert _loaded_by("vs_control.main(['--all'])", unneeded, etc_tree) == []


def test_every_module_and_public_function_says_what_it_is_for() -> None:
    """A docstring on every module and on every public function, method and class."""
    missing = []
    for path in SOURCES:
        tree = ast.parse(path.read_text(), str(path))
        if ast.get_docstring(tree) is None and path.stat().st_size:
            missing.append(f"{path.relative_to(ROOT)}: module")
        for node in ast.walk(tree):
            public = isinstance(
                node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef
            ) and not node.name.startswith("_")
            if public and ast.get_docstring(node) is None:
                missing.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.name}")
    assert not missing, "\n".join(missing)
