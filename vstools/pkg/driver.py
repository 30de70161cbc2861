"""One vs-pkg run on one guest: check it runs (or start it for the run), find its package
manager and mirrors, take a snapshot before changes, open the mirrors' access (vstools.pkg.session),
run each step inside the guest through the hardened exec path (vstools.runtime.enter: the
guest's namespaces, cgroup, capabilities and seccomp, never host privileges), close the access.

The guest's binaries (apt, dpkg, their maintainer scripts, an ``ld.so.preload``) only ever run
there: a trojan in the guest gains what the guest's root already has (catalogue H5)."""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TextIO

from vstools.config.settings import PkgCache
from vstools.errors import ExitCode, HostError, StateError, UsageError
from vstools.host.hostconfig import HostConfig
from vstools.host.rootfs import GuestRoot
from vstools.net.plan import plan_network
from vstools.pkg.detect import detect_tool, read_mirrors
from vstools.pkg.progress import LineSplitter, ProgressBar, parse_status
from vstools.pkg.session import opened
from vstools.pkg.tools import (
    CHANGES_PACKAGES,
    LISTS,
    NEEDS_MIRRORS,
    Action,
    Conffiles,
    Package,
    PackageTool,
    Step,
    order_steps,
)
from vstools.runtime.enter import run_in_guest
from vstools.runtime.state import is_running
from vstools.storage.base import Snapshot
from vstools.storage.select import guest_storage

log = logging.getLogger("vstools.pkg")


class PackageToolError(HostError):
    """The guest's package manager failed (its firewall is restored): exit 5."""

    exit_code = ExitCode.HOST


@dataclass(frozen=True, slots=True)
class Request:
    """What to do on each guest."""

    steps: tuple[Step, ...]
    conffiles: Conffiles = Conffiles.OLD
    snapshot: bool = True
    start_stopped: bool = False
    dry_run: bool = False


@dataclass
class StepResult:
    """One step's outcome: its exit status, the packages of a list, the text it printed."""

    action: Action
    args: tuple[str, ...]
    code: int
    packages: list[Package] | None = None
    text: str = ""


@dataclass
class GuestResult:
    """One guest's run."""

    name: str
    tool: str = ""
    steps: list[StepResult] = field(default_factory=list)
    snapshot: str | None = None
    started: bool = False
    seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class Output:
    """Where a run shows itself: the command's streams, whether stderr is a terminal (a
    progress bar), and whether the package tool's own output is wanted on stdout."""

    stdout: TextIO
    stderr: TextIO
    terminal: bool = False
    echo: bool = True


class _Timeout(Exception):
    pass


@contextlib.contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """Raise PackageToolError if the block takes longer than ``seconds`` (SIGALRM: the main
    thread of this process only, which is where vs-pkg runs guests)."""

    def expired(signum: int, frame: FrameType | None) -> None:
        """SIGALRM: the run took too long."""
        raise _Timeout

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    except _Timeout:
        raise PackageToolError(f"stopped after PKG_TIMEOUT={seconds} s") from None
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def run_guest(host: HostConfig, name: str, request: Request, output: Output) -> GuestResult:
    """Everything vs-pkg does for guest ``name``; PackageToolError when a step fails (after the
    access is closed), StateError for a stopped guest without ``start_stopped``."""
    files = host.guest(name)
    result = GuestResult(name)
    began = time.monotonic()
    steps = order_steps(request.steps)
    running = is_running(host.paths.guest_run_dir(name))
    if not running and not request.start_stopped:
        raise StateError(
            f"guest {name} is stopped: start it, or add --start-stopped to start it for this"
            " run and stop it again after"
        )
    with GuestRoot(host.paths.guest_root(name)) as root:
        tool = detect_tool(root, name)
        mirrors = read_mirrors(root, tool) if any(s.action in NEEDS_MIRRORS for s in steps) else []
    result.tool = tool.name
    # apt-cacher-ng is apt's: dnf and apk guests keep tinyproxy whatever PKG_CACHE says.
    cache = host.settings.pkg_cache is PkgCache.APT_CACHER_NG and tool.name == "apt"
    plan = None
    if mirrors or any(s.action in NEEDS_MIRRORS for s in steps):
        plan = plan_network(files.conf, host.networks(), host.create())
        if plan is None:
            raise UsageError(
                f"guest {name} has no network (NETWORK=none or no network of networks.conf"
                " holds its address): its mirrors cannot be reached"
            )
    if request.dry_run:
        for step in steps:
            inv = tool.invocation(step, "http://PROXY/" if plan else None, request.conffiles)
            print(f"would: {name}: run in the guest: {' '.join(inv.argv)}", file=output.stderr)
        if plan is not None:
            with opened(host, plan, mirrors, cache=cache, dry_run=True):
                pass
        return result
    with _started(host, name, started=not running) as started:
        result.started = started
        previous = _load_snapshot_record(host, name)
        if request.snapshot and any(s.action in CHANGES_PACKAGES for s in steps):
            result.snapshot = _take_snapshot(host, name)
        with deadline(host.settings.pkg_timeout_s):
            if plan is not None:
                with opened(host, plan, mirrors, cache=cache) as opening:
                    url = opening.proxy.url if opening.proxy else None
                    _run_steps(
                        host,
                        name,
                        tool,
                        steps,
                        proxy_url=url,
                        request=request,
                        output=output,
                        result=result,
                    )
            else:
                _run_steps(
                    host,
                    name,
                    tool,
                    steps,
                    proxy_url=None,
                    request=request,
                    output=output,
                    result=result,
                )
        if result.snapshot is not None and previous is not None:
            _drop_snapshot(host, name, previous)  # kept until this later run succeeded
    result.seconds = time.monotonic() - began
    return result


def _run_steps(
    host: HostConfig,
    name: str,
    tool: PackageTool,
    steps: list[Step],
    *,
    proxy_url: str | None,
    request: Request,
    output: Output,
    result: GuestResult,
) -> None:
    for step in steps:
        done = _run_step(
            host, name, tool, step, proxy_url=proxy_url, conffiles=request.conffiles, output=output
        )
        result.steps.append(done)
        if done.code not in tool.invocation(step, proxy_url, request.conffiles).ok_codes:
            what = " ".join([str(step.action), *step.args])
            raise PackageToolError(f"guest {name}: {tool.name} {what} failed (exit {done.code})")


def _run_step(
    host: HostConfig,
    name: str,
    tool: PackageTool,
    step: Step,
    *,
    proxy_url: str | None,
    conffiles: Conffiles,
    output: Output,
) -> StepResult:
    """Run one step in the guest: its stdout kept (and shown unless a list, --json or a
    progress bar), its status lines drawn as a bar or counted, its other stderr shown."""
    invocation = tool.invocation(step, proxy_url, conffiles)
    listed = step.action in LISTS
    bar = ProgressBar(output.stderr, f"{name} {step.action}") if output.terminal else None
    captured: list[str] = []
    statuses = 0

    def out_line(line: str) -> None:
        """A line of the tool's stdout: kept, and shown unless hidden."""
        captured.append(line)
        if not listed and output.echo and bar is None:
            print(line, file=output.stdout, flush=True)

    def err_line(line: str) -> None:
        """A line of its stderr: a status line to the bar or counter, anything else shown."""
        nonlocal statuses
        status = parse_status(line)
        if status is None:
            if line.strip():
                print(f"{name}: {line}", file=output.stderr, flush=True)
            return
        statuses += 1
        if bar is not None:
            bar.show(status)
        elif status.kind == "pmerror":
            print(f"{name}: {status.package}: {status.text}", file=output.stderr, flush=True)

    out, err = LineSplitter(out_line), LineSplitter(err_line)
    log.info("%s: %s", name, " ".join(invocation.argv))
    code = run_in_guest(
        host.paths,
        name,
        invocation.argv,
        use_tty=False,
        env=invocation.env,
        output=(out.feed, err.feed),
    )
    out.close()
    err.close()
    if bar is not None:
        bar.done()
    text = "\n".join(captured) + ("\n" if captured else "")
    failed = code not in invocation.ok_codes
    if failed and bar is not None and not listed:
        output.stderr.write(text)  # what the bar hid: the tool's own account
    if not listed and not failed:  # the summary line (on a terminal it replaces the bar)
        print(f"{name}: {step.action} done ({statuses} progress reports)", file=output.stderr)
    packages = tool.parse_list(step.action, text) if listed else None
    return StepResult(step.action, step.args, code, packages, text)


@contextlib.contextmanager
def _started(host: HostConfig, name: str, *, started: bool) -> Iterator[bool]:
    """Start a stopped guest for the run (``--start-stopped``) and stop it again after."""
    if not started:
        yield False
        return
    # Imported here: starting a guest pulls in the supervisor and sandbox (about 40 ms), which
    # only --start-stopped needs.
    from vstools.guest.start import start_guest
    from vstools.guest.stop import stop_guest

    start_guest(host, name)
    try:
        yield True
    finally:
        stop_guest(host, name)


# -- snapshots before changes (btrfs, lvm): kept until the next successful run ----------------


def _load_snapshot_record(host: HostConfig, name: str) -> Snapshot | None:
    path = host.paths.state_dir / "pkg" / f"{name}.snapshot.json"
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return Snapshot(data["guest"], data["tag"], Path(data["path"]), data.get("volume"))


def _take_snapshot(host: HostConfig, name: str) -> str | None:
    conf = host.guest_conf(name)
    if str(conf.storage) == "dir":
        return None
    storage = guest_storage(host, conf)
    tag = time.strftime("vs-pkg-%Y%m%d-%H%M%S", time.gmtime())
    snapshot = storage.create_snapshot(name, tag)
    path = host.paths.state_dir / "pkg" / f"{name}.snapshot.json"
    record = {
        "guest": name,
        "tag": tag,
        "path": str(snapshot.path),
        "volume": snapshot.volume,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record) + "\n")
    log.info("%s: snapshot %s before the changes", name, tag)
    return tag


def _drop_snapshot(host: HostConfig, name: str, snapshot: Snapshot) -> None:
    try:
        guest_storage(host, host.guest_conf(name)).remove_snapshot(snapshot)
    except (OSError, HostError) as exc:
        log.warning("%s: earlier vs-pkg snapshot %s not removed: %s", name, snapshot.tag, exc)
