"""The VM lab (TESTING.md, tier ``lab``): a Debian kernel under qemu (TCG) that sees this
machine's root filesystem read-only, runs one shell script as root and powers off.

How a run goes:

1. ``fetch_kernel`` downloads the generic ``linux-image-*-amd64`` package that
   ``linux-image-amd64`` points at (``apt-get download``), unpacks it with ``dpkg -x`` and
   writes ``modules.dep`` with ``busybox depmod``, once, into ``CACHE_DIR/<package>_<version>``.
2. ``build_initramfs`` packs busybox and the modules needed to reach the root (virtio-pci,
   9p, overlay, in dependency order) into an uncompressed newc archive, cached beside it.
3. ``run_in_vm`` boots it: the initramfs mounts the host's ``/`` over virtio-9p read-only,
   puts a tmpfs overlay on top (everything the VM writes stays in the VM), mounts a second,
   writable 9p share (the run's ``io`` directory) at ``/run/vs-lab`` and switches root to run
   ``stage2`` from it. ``stage2`` mounts proc, sys, dev, a fresh /tmp and cgroup2 at
   /sys/fs/cgroup (memory, pids and cpu enabled for children, as systemd does), loads the
   requested modules from the cached package, runs the script and writes its output and exit
   status back into ``io``; then the VM powers off.

The VM has no network unless asked for (``nic=True`` adds a user-mode NIC that exists only
inside qemu). qemu is stopped by the PID this module started, on timeout too.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

TestFunction = TypeVar("TestFunction", bound=Callable[..., None])

CACHE_DIR = Path(os.environ.get("VS_LAB_CACHE", "/var/cache/vs-tools-lab"))
QEMU = "qemu-system-x86_64"
BUSYBOX = Path("/bin/busybox")  # busybox-static: no libraries to carry into the initramfs
REPO = Path(__file__).resolve().parents[2]  # the checkout the VM runs
META_PACKAGE = "linux-image-amd64"  # generic flavour: the -cloud one has no 9p
BOOT_MODULES = ("virtio_pci", "9pnet_virtio", "9p", "overlay")
IO_MOUNT = "/run/vs-lab"  # where the VM sees the run's io directory
BOOT_TIMEOUT_S = 120.0
MEMORY_MB = 2048
# One virtual CPU: the VM runs beside the foreground suite on a 2-CPU machine, and with two,
# a vCPU spinning on a lock its preempted twin holds burned the difference. Measured with one
# busy process beside it, qemu at nice 19, the same Python imports in the VM: 38.0 and 32.9 s
# of qemu CPU with one vCPU against 57.2 and 73.6 s with two (runs alternated).
CPUS = 1

# Stage 1, inside the initramfs: reach the host's root and hand over to the run's stage2.
# Any failure drops out of init, the kernel panics, panic=-1 reboots and -no-reboot ends qemu.
INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
fail() { echo "vs-lab init: $*"; exec poweroff -f; }
mount -t proc proc /proc && mount -t sysfs sysfs /sys && mount -t devtmpfs devtmpfs /dev \
    || fail "cannot mount proc, sys, dev"
for module in $(cat /modules/order); do
    insmod "/modules/$module" || fail "insmod $module"
done
# cache=loose: the host root is read-only for the VM's lifetime, so caching all of it is safe
# and makes Python start in a fraction of the time over 9p.
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=524288 hostroot /lower \
    || fail "cannot mount the host root over 9p"
mount -t tmpfs -o mode=0755 tmpfs /rw && mkdir /rw/upper /rw/work || fail "tmpfs"
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot \
    || fail "cannot mount the overlay"
mount -t tmpfs -o mode=0755 tmpfs /newroot/run || fail "tmpfs on /run"
mkdir -p /newroot/run/vs-lab
mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288 labio /newroot/run/vs-lab \
    || fail "cannot mount the io share"
for fs in proc sys dev; do mount --move /$fs /newroot/$fs || fail "move /$fs"; done
exec switch_root /newroot /bin/busybox sh /run/vs-lab/stage2
"""

# Stage 2, on the overlay root: the run's environment, its modules, its script, its result.
STAGE2 = """set -u
bb=/bin/busybox
io={io}
$bb mkdir -p /dev/pts /dev/shm
$bb mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts
$bb mount -t tmpfs tmpfs /dev/shm
$bb mount -t tmpfs -o mode=1777 tmpfs /tmp
# The checkout under test, at its own path, whatever that is (CI clones it anywhere, /tmp too,
# which the fresh /tmp above would hide).
$bb mkdir -p {repo}
$bb mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=524288 labrepo {repo}
$bb mount -t cgroup2 cgroup2 /sys/fs/cgroup
echo "+memory +pids +cpu" > /sys/fs/cgroup/cgroup.subtree_control
$bb mkdir -p /lib/modules && $bb mount --bind {modules} /lib/modules
# The kernel loads modules on demand (nf_tables, veth, ...) through modprobe_path; this host
# has no kmod, so point it at busybox's modprobe.
$bb mkdir -p /run/vs-lab-bin && $bb ln -s /bin/busybox /run/vs-lab-bin/modprobe
echo /run/vs-lab-bin/modprobe > /proc/sys/kernel/modprobe
$bb hostname vs-lab
$bb ip link set lo up
status=0
for module in {modules_wanted}; do
    $bb modprobe "$module" >> $io/output 2>&1 || {{ echo "vs-lab: modprobe $module failed" \
        >> $io/output; status=125; }}
done
if [ $status -eq 0 ]; then
    cd /
    env -i {env} /bin/sh $io/script < /dev/null >> $io/output 2>&1
    status=$?
fi
echo $status > $io/status.tmp && $bb mv $io/status.tmp $io/status
$bb sync
$bb poweroff -f
"""


class LabError(Exception):
    """The lab could not boot or did not report back (not: the script failed)."""


@dataclass(frozen=True)
class Kernel:
    """An unpacked kernel package in the cache."""

    root: Path  # holds boot/ and lib/modules/ as dpkg -x left them
    release: str  # uname -r, such as 6.1.0-56-amd64

    @property
    def vmlinuz(self) -> Path:
        return self.root / "boot" / f"vmlinuz-{self.release}"

    @property
    def modules_dir(self) -> Path:
        return self.root / "lib" / "modules" / self.release


@dataclass(frozen=True)
class LabResult:
    """What a VM run reported: the script's exit status and output, and the serial console."""

    status: int
    output: str
    console: str
    seconds: float

    def check(self) -> LabResult:
        """Self, or AssertionError with the output when the script failed."""
        if self.status != 0:
            raise AssertionError(
                f"lab script exited {self.status}:\n{self.output}\n--- console ---\n"
                + self.console[-3000:]
            )
        return self


def probe_lab() -> str | None:
    """None when this machine can run the lab, else why not (no /dev/kvm needed: TCG)."""
    if os.geteuid() != 0:
        return "not root"
    missing = [tool for tool in (QEMU, "dpkg", "apt-get") if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not installed (make deps installs qemu-system-x86)"
    if not BUSYBOX.is_file():
        return f"{BUSYBOX} missing (busybox-static)"
    return None


# -- kernel --------------------------------------------------------------------------------


def _kernel_package() -> tuple[str, str] | None:
    """(package, version) that linux-image-amd64 depends on, or None if apt does not know."""
    proc = subprocess.run(
        ["apt-cache", "show", "--no-all-versions", META_PACKAGE],
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(r"^Depends:.*?(linux-image-[\w.+-]+)\s*\(= ([^)]+)\)", proc.stdout, re.M)
    return (match[1], match[2]) if match else None


@contextlib.contextmanager
def _locked(cache_dir: Path) -> Iterator[None]:
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # two test runs at once download only once
        yield


@functools.cache
def fetch_kernel(cache_dir: Path = CACHE_DIR) -> Kernel:
    """The cached kernel package, downloaded and unpacked on first use (asked once per
    process: apt's answer does not change during a test run)."""
    with _locked(cache_dir):
        package = _kernel_package()
        if package is None:
            # A fresh machine may not have package lists yet.
            subprocess.run(["apt-get", "update", "-qq"], check=True, capture_output=True)
            package = _kernel_package()
        if package is None:
            cached = sorted(cache_dir.glob("linux-image-*/.complete"))
            if not cached:
                raise LabError(f"apt knows no {META_PACKAGE} and nothing is cached in {cache_dir}")
            return _kernel_in(cached[-1].parent)
        target = cache_dir / f"{package[0]}_{package[1]}"
        if not (target / ".complete").exists():
            _download(package, target)
        return _kernel_in(target)


def _download(package: tuple[str, str], target: Path) -> None:
    work = Path(tempfile.mkdtemp(prefix=".fetch-", dir=target.parent))
    try:
        subprocess.run(
            ["apt-get", "download", "-q", f"{package[0]}={package[1]}"],
            cwd=work,
            check=True,
            capture_output=True,
        )
        (deb,) = work.glob("*.deb")
        unpacked = work / "root"
        subprocess.run(["dpkg", "-x", str(deb), str(unpacked)], check=True)
        deb.unlink()
        (release,) = os.listdir(unpacked / "lib" / "modules")
        # The package's postinst would run depmod; busybox's writes a modules.dep that both
        # this module and busybox modprobe in the VM read.
        subprocess.run(
            [str(BUSYBOX), "depmod", "-b", str(unpacked), release], check=True, capture_output=True
        )
        (unpacked / ".complete").write_text(f"{package[0]} {package[1]} {release}\n")
        if target.exists():
            shutil.rmtree(target)
        unpacked.rename(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    # Only the current kernel is kept (about 400 MB each).
    for old in target.parent.glob("linux-image-*"):
        if old != target:
            shutil.rmtree(old, ignore_errors=True)


def _kernel_in(root: Path) -> Kernel:
    (release,) = os.listdir(root / "lib" / "modules")
    return Kernel(root, release)


def module_load_order(modules_dir: Path, wanted: Sequence[str]) -> list[str]:
    """Paths (relative to ``modules_dir``) of ``wanted`` and their dependencies, each after
    the modules it needs, read from modules.dep (names use _ or - interchangeably)."""
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in (modules_dir / "modules.dep").read_text().splitlines():
        if ":" not in line:
            continue
        path, _, needs = line.partition(":")
        deps[path] = needs.split()
        by_name[_module_name(path)] = path
    order: list[str] = []

    def visit(path: str, seen: tuple[str, ...]) -> None:
        if path in order:
            return
        if path in seen:
            raise LabError(f"dependency cycle in modules.dep: {' -> '.join((*seen, path))}")
        for need in deps.get(path, []):
            visit(need, (*seen, path))
        order.append(path)

    for name in wanted:
        path = by_name.get(name.replace("-", "_"))
        if path is None:
            raise LabError(f"no module {name} in {modules_dir} (built in, or not in this kernel)")
        visit(path, ())
    return order


def _module_name(path: str) -> str:
    return Path(path).name.split(".ko")[0].replace("-", "_")


# -- initramfs -----------------------------------------------------------------------------


def _cpio_entry(name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> bytes:
    """One entry of a newc ("070701") cpio archive, padded to 4 bytes."""
    fields = (0, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name) + 1, 0)
    header = b"070701" + b"".join(b"%08X" % value for value in fields)
    head = header + name.encode() + b"\0"
    head += b"\0" * (-len(head) % 4)
    return head + data + b"\0" * (-len(data) % 4)


def build_initramfs(kernel: Kernel) -> Path:
    """The boot initramfs for ``kernel`` (cached next to it, keyed by its content)."""
    order = module_load_order(kernel.modules_dir, BOOT_MODULES)
    busybox = BUSYBOX.read_bytes()
    digest = hashlib.sha256(INIT.encode() + busybox + "\n".join(order).encode()).hexdigest()
    target = kernel.root / f"initramfs-{digest[:16]}.cpio"
    if target.exists():
        return target
    entries = [_cpio_entry(d, stat.S_IFDIR | 0o755) for d in ("bin", "dev", "modules")]
    entries += [_cpio_entry(d, stat.S_IFDIR | 0o755) for d in ("proc", "sys", "lower", "rw")]
    entries.append(_cpio_entry("newroot", stat.S_IFDIR | 0o755))
    entries.append(_cpio_entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)))
    entries.append(_cpio_entry("bin/busybox", stat.S_IFREG | 0o755, busybox))
    entries.append(_cpio_entry("init", stat.S_IFREG | 0o755, INIT.encode()))
    names = [Path(path).name for path in order]
    for path, name in zip(order, names, strict=True):
        data = (kernel.modules_dir / path).read_bytes()
        entries.append(_cpio_entry(f"modules/{name}", stat.S_IFREG | 0o644, data))
    entries.append(
        _cpio_entry("modules/order", stat.S_IFREG | 0o644, "\n".join(names).encode() + b"\n")
    )
    entries.append(_cpio_entry("TRAILER!!!", 0))
    partial = target.with_suffix(".part")
    partial.write_bytes(b"".join(entries))
    partial.rename(target)
    return target


# -- running -------------------------------------------------------------------------------


def build_qemu_argv(
    kernel: Kernel, initramfs: Path, io_dir: Path, *, nic: bool = False
) -> list[str]:
    """The qemu command line for one run (pure: no host state read)."""
    append = "console=ttyS0 panic=-1 quiet cgroup_no_v1=all"
    argv = [QEMU, "-accel", "tcg,thread=multi", "-m", str(MEMORY_MB), "-smp", str(CPUS)]
    argv += ["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"]
    argv += ["-kernel", str(kernel.vmlinuz), "-initrd", str(initramfs), "-append", append]
    argv += ["-serial", f"file:{io_dir / 'console'}"]
    argv += ["-virtfs", "local,path=/,mount_tag=hostroot,security_model=passthrough,"
             "readonly=on,multidevs=remap"]  # fmt: skip
    argv += ["-virtfs", f"local,path={io_dir},mount_tag=labio,security_model=none"]
    argv += ["-virtfs", f"local,path={REPO},mount_tag=labrepo,security_model=passthrough,"
             "readonly=on,multidevs=remap"]  # fmt: skip
    # A user-mode NIC exists only inside qemu: the VM's packets never reach a host interface.
    argv += ["-nic", "user,model=virtio-net-pci,restrict=on" if nic else "none"]
    return argv


def run_in_vm(script: str, *, work_dir: Path, **options: Any) -> LabResult:
    """Boot the lab, run ``script`` with /bin/sh as root in the VM, return what it reported
    (``start_in_vm``'s options; the run is waited for)."""
    return start_in_vm(script, work_dir=work_dir, **options).wait()


def start_in_vm(
    script: str,
    *,
    work_dir: Path,
    env: Mapping[str, str] | None = None,
    modules: Sequence[str] = (),
    nic: bool = False,
    timeout_s: float = BOOT_TIMEOUT_S,
    files: Mapping[str, bytes] | None = None,
    nice: int = 0,
) -> LabRun:
    """Boot the lab to run ``script`` with /bin/sh as root in the VM; ``wait()`` for it.

    ``work_dir`` (the caller's, removed by the caller) holds the run's io directory; ``files``
    are written into it and appear in the VM under /run/vs-lab. ``modules`` are loaded with
    modprobe before the script (a failure is exit status 125). ``timeout_s`` counts from the
    boot. ``nice`` lowers qemu's priority (a run in the background of other tests)."""
    kernel = fetch_kernel()
    initramfs = build_initramfs(kernel)
    io_dir = work_dir / "io"
    io_dir.mkdir()
    for name, data in (files or {}).items():
        (io_dir / name).write_bytes(data)
    (io_dir / "script").write_text(script)
    (io_dir / "output").write_text("")
    inner_env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "VS_LAB_INSIDE": "1",
        **(env or {}),
    }
    (io_dir / "stage2").write_text(
        STAGE2.format(
            io=IO_MOUNT,
            repo=shlex.quote(str(REPO)),
            modules=shlex.quote(str(kernel.root / "lib" / "modules")),
            modules_wanted=" ".join(shlex.quote(m) for m in modules),
            env=" ".join(shlex.quote(f"{k}={v}") for k, v in inner_env.items()),
        )
    )
    argv = build_qemu_argv(kernel, initramfs, io_dir, nic=nic)
    if nice:
        argv = ["nice", "-n", str(nice), *argv]  # nice execs qemu: the PID stays the one we kill
    started = time.monotonic()
    qemu = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return LabRun(qemu, io_dir, started, timeout_s)


@dataclass
class LabRun:
    """A VM booted by ``start_in_vm``: ``wait()`` for its result, ``stop()`` to kill it."""

    qemu: subprocess.Popen[bytes]
    io_dir: Path
    started: float
    timeout_s: float

    def wait(self) -> LabResult:
        """The run's result. LabError when the VM did not report an exit status within its
        timeout (counted from the boot; it is then killed by its PID)."""
        left = max(0.0, self.started + self.timeout_s - time.monotonic())
        try:
            qemu_said, _ = self.qemu.communicate(timeout=left)
        except subprocess.TimeoutExpired:
            self.stop()
            raise LabError(
                f"the VM did not finish within {self.timeout_s:.0f} s "
                f"(killed qemu, pid {self.qemu.pid})" + _tails(self.io_dir)
            ) from None
        finally:
            self.stop()
        seconds = time.monotonic() - self.started
        status_file = self.io_dir / "status"
        if not status_file.exists():
            raise LabError(
                f"the VM reported no exit status (qemu exited {self.qemu.returncode} after "
                f"{seconds:.1f} s): {qemu_said.decode(errors='replace').strip()}"
                + _tails(self.io_dir)
            )
        return LabResult(
            int(status_file.read_text()),
            _text(self.io_dir / "output"),
            _text(self.io_dir / "console"),
            seconds,
        )

    def stop(self) -> None:
        _stop(self.qemu)


def _stop(qemu: subprocess.Popen[bytes]) -> None:
    """Kill qemu by the PID we started (its own session: nothing else shares the group)."""
    if qemu.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(qemu.pid, signal.SIGKILL)
        qemu.wait()


def _text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _tails(io_dir: Path) -> str:
    return (
        f"\n--- output ---\n{_text(io_dir / 'output')[-3000:]}"
        f"\n--- console ---\n{_text(io_dir / 'console')[-3000:]}"
    )


# -- fixture -------------------------------------------------------------------------------


class LabVM:
    """``lab_vm(script, ...)``: one VM run per call, each with its own io directory under the
    test's work directory (its name carries the run prefix, so a stray qemu is a leak)."""

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = work_dir
        self.runs = 0

    def __call__(self, script: str, **options: Any) -> LabResult:
        return self.start(script, **options).wait()

    def start(self, script: str, **options: Any) -> LabRun:
        self.runs += 1
        run_dir = self.work_dir / f"run{self.runs}"
        run_dir.mkdir()
        return start_in_vm(script, work_dir=run_dir, **options)

    def io(self, run: int | None = None) -> Path:
        """The io directory of a run (default: the last), with what the VM wrote into it."""
        return self.work_dir / f"run{run or self.runs}" / "io"


def _new_lab(run_prefix: str) -> LabVM:
    return LabVM(Path(tempfile.mkdtemp(prefix=f"{run_prefix}-lab-")))


@pytest.fixture
def lab_vm(run_prefix: str) -> Iterator[LabVM]:
    """Boot the lab from a test: ``lab_vm("ip link ...", modules=["8021q"], nic=True)``."""
    lab = _new_lab(run_prefix)
    try:
        yield lab
    finally:
        shutil.rmtree(lab.work_dir, ignore_errors=True)


# -- runs started with the session ---------------------------------------------------------
# A long VM run (the inner suites take minutes under TCG) need not hold the suite up. A test
# registered with ``early`` has its VM booted, niced, as soon as collection has selected it,
# and it runs last, to pick the result up with ``early_run``: the other tests run meanwhile,
# ahead of qemu on the CPUs. Every early VM is killed by its PID when the session ends, before
# the leak check.

Starter = Callable[[LabVM], LabRun]
_STARTERS: dict[str, Starter] = {}
_started: dict[str, tuple[LabVM, LabRun]] = {}


def early(start: Starter) -> Callable[[TestFunction], TestFunction]:
    """Register a test whose VM run ``start(lab)`` boots when the session starts."""

    def register(test: TestFunction) -> TestFunction:
        _STARTERS[f"{test.__module__}.{test.__name__}"] = start
        return test

    return register


def early_run(item: pytest.Item, lab: LabVM) -> LabRun:
    """The run started with the session for this test, or, when none was (the test alone,
    --collect-only before), one started now in ``lab``."""
    key = _key(item)
    assert key is not None and key in _STARTERS, f"{item.nodeid} is not registered with early"
    if key in _started:
        return _started[key][1]
    return _STARTERS[key](lab)


def _key(item: pytest.Item) -> str | None:
    function = getattr(item, "function", None)
    return None if function is None else f"{function.__module__}.{function.__name__}"


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: _key(item) in _STARTERS)  # stable: early tests last


def pytest_collection_finish(session: pytest.Session) -> None:
    if session.config.option.collectonly:
        return
    from tests.conftest import RUN_PREFIX  # the session's prefix, set by then

    for item in session.items:
        key = _key(item)
        if key not in _STARTERS or key in _started:
            continue
        if item.get_closest_marker("skip") or dict(item.user_properties).get("capability"):
            continue  # the tier is off here: the test reports why itself
        lab = _new_lab(RUN_PREFIX)
        try:
            _started[key] = (lab, _STARTERS[key](lab))
        except Exception:  # the test starts it again and reports the failure
            shutil.rmtree(lab.work_dir, ignore_errors=True)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish() -> None:
    while _started:
        _, (lab, run) = _started.popitem()
        run.stop()
        shutil.rmtree(lab.work_dir, ignore_errors=True)
