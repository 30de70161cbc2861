"""vs-pkg: run a guest's package manager from the host."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from vstools.cli.common import (
    Context,
    add_guest_selection,
    arg_type,
    confirm,
    for_each_guest,
    guests_phrase,
    new_parser,
    run_command,
    selected_guests,
)
from vstools.config.values import parse_uint
from vstools.errors import ExitCode, UsageError, VSError
from vstools.host.journal import operation
from vstools.pkg.driver import GuestResult, Output, Request, run_guest
from vstools.pkg.tools import CHANGES_PACKAGES, LISTS, Action, Conffiles, Step
from vstools.serialize import to_jsonable

DESCRIPTION = """\
Run the guest's own package manager (apt/dpkg; dnf and apk where present) inside the guest, as
vs-exec does, never the host's tools on the guest's files. For the steps that download, the
guest reaches only the mirrors its own configuration names, through a proxy the host starts for
this run on PKG_PROXY_ADDRESS (tinyproxy; for apt guests with PKG_CACHE=apt-cacher-ng, an
apt-cacher-ng whose cache all runs share) and one firewall element that expires after
PKG_TIMEOUT; the exact previous ruleset is in force afterwards, also after a failure or Ctrl-C.
The steps run in the order --update_sources, --list_upgrades, --upgrade_all, --upgrade,
--install, --remove, --search, --show; with none, the installed packages are listed. Before
changes on btrfs or lvm a snapshot is taken and kept until the next successful run
(--no-snapshot skips it).
Output: the package tool's output (a progress bar instead on a terminal) and a summary line per
step on stderr; lists as 'vserver:package:version[:candidate]' lines, or --json. --all with a
step that changes packages asks for confirmation first when stdin is a terminal (not with
--yes); any answer but y/yes exits 7 and changes nothing."""

# Debian, RPM and apk package names, with an optional version or architecture qualifier; never
# starting with "-" (it would be an option to the guest's tool).
PACKAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9+._~:=@/-]*")


def _package(text: str) -> str:
    if not PACKAGE.fullmatch(text) or len(text) > 200:
        raise argparse.ArgumentTypeError(f"{text!r} is not a package name")
    return text


def _term(text: str) -> str:
    if not text or text.startswith("-") or not text.isprintable() or len(text) > 200:
        raise argparse.ArgumentTypeError(f"{text!r} is not a search term")
    return text


def build_parser() -> argparse.ArgumentParser:
    """The parser of vs-pkg: the guest selection and the package manager's actions."""
    parser = new_parser("vs-pkg", DESCRIPTION, mutating=True)
    add_guest_selection(parser)
    parser.add_argument("--update_sources", action="store_true", help="refresh package lists")
    parser.add_argument("--list_upgrades", action="store_true", help="list upgradable packages")
    parser.add_argument("--upgrade_all", action="store_true", help="upgrade every package")
    parser.add_argument(
        "--upgrade", metavar="P", action="append", type=_package, help="upgrade one package"
    )
    parser.add_argument("--install", metavar="P", nargs="+", type=_package, help="install packages")
    parser.add_argument(
        "--remove", metavar="P", action="append", type=_package, help="remove a package"
    )
    parser.add_argument("--search", metavar="T", type=_term, help="search packages")
    parser.add_argument("--show", metavar="P", type=_package, help="describe a package")
    parser.add_argument(
        "--conffiles",
        choices=[c.value for c in Conffiles],
        default=Conffiles.OLD.value,
        help="changed configuration files: keep ours (old, the default) or take the package's",
    )
    parser.add_argument(
        "--no-snapshot", action="store_true", help="no snapshot before changes (btrfs, lvm)"
    )
    parser.add_argument(
        "--jobs",
        metavar="N",
        type=arg_type(lambda text: parse_uint(text, minimum=1, maximum=64, what="jobs"), "jobs"),
        default=1,
        help="with --all: guests handled at once (default 1)",
    )
    parser.add_argument(
        "--start-stopped",
        action="store_true",
        help="start a stopped guest for the run and stop it again after",
    )
    return parser


def steps_of(args: argparse.Namespace) -> tuple[Step, ...]:
    """The steps the options ask for (in any order: the driver orders them); with none, the
    installed packages."""
    steps: list[Step] = []
    for action in (Action.UPDATE_SOURCES, Action.LIST_UPGRADES, Action.UPGRADE_ALL):
        if getattr(args, action.value):
            steps.append(Step(action))
    steps += [Step(Action.UPGRADE, (p,)) for p in args.upgrade or ()]
    if args.install:
        steps.append(Step(Action.INSTALL, tuple(args.install)))
    if args.remove:
        steps.append(Step(Action.REMOVE, tuple(args.remove)))
    if args.search:
        steps.append(Step(Action.SEARCH, (args.search,)))
    if args.show:
        steps.append(Step(Action.SHOW, (args.show,)))
    return tuple(steps) or (Step(Action.LIST_INSTALLED),)


def _lines(result: GuestResult) -> list[str]:
    lines = []
    for step in result.steps:
        if step.action is Action.SHOW:
            lines += [f"{result.name}:{line}" for line in step.text.splitlines()]
        for package in step.packages or ():
            fields = [result.name, package.name, package.version]
            if step.action is Action.LIST_UPGRADES:
                fields.append(package.candidate)
            if step.action is Action.SEARCH:
                fields.append(package.summary)
            lines.append(":".join(fields))
    return lines


def _record(result: GuestResult) -> Mapping[str, object]:
    return {
        "vserver": result.name,
        "tool": result.tool,
        "snapshot": result.snapshot,
        "started": result.started,
        "seconds": round(result.seconds, 3),
        "steps": [
            {
                "action": str(step.action),
                "args": list(step.args),
                "exit_code": step.code,
                **({"packages": step.packages} if step.packages is not None else {}),
                **(
                    {"text": step.text}
                    if step.action not in LISTS or step.action is Action.SHOW
                    else {}
                ),
            }
            for step in result.steps
        ],
    }


def handle(ctx: Context) -> int:
    """Run vs-pkg on each selected guest in turn; each guest's result is reported and the
    command exits with the worst failure's code."""
    args = ctx.args
    request = Request(
        steps_of(args),
        Conffiles(args.conffiles),
        snapshot=not args.no_snapshot,
        start_stopped=args.start_stopped,
        dry_run=ctx.dry_run,
    )
    # SIGTERM closes the access as Ctrl-C does (exit 130), rather than leaving it to expire.
    signal.signal(signal.SIGTERM, _interrupted)
    names = selected_guests(ctx)
    if not names:
        raise UsageError("no guest on this host")
    if args.all and any(step.action in CHANGES_PACKAGES for step in request.steps):
        changes = ", ".join(
            sorted({f"--{s.action}" for s in request.steps if s.action in CHANGES_PACKAGES})
        )
        confirm(ctx, f"Run {changes} on {guests_phrase(names)}?")
    terminal = not ctx.json and _is_tty(ctx.stderr)
    output = Output(ctx.stdout, ctx.stderr, terminal=terminal, echo=not ctx.json)

    def one(name: str) -> Mapping[str, object]:
        """One guest's run, its lines printed (not with --json); its record returned."""
        what = " ".join(f"--{s.action} {' '.join(s.args)}".strip() for s in request.steps)
        if ctx.dry_run:
            return _record(run_guest(ctx.host, name, request, output))
        with operation(f"vs-pkg {name} {what}"):
            result = run_guest(ctx.host, name, request, output)
        if not ctx.json:
            ctx.emit_lines(_lines(result))
        return _record(result)

    if args.all and args.jobs > 1 and not ctx.dry_run:
        records = _in_parallel(ctx, names, args.jobs, one)
    else:
        records = for_each_guest(ctx, names, one)
    if ctx.json:
        ctx.emit_json(records)
    return ctx.exit_code()


def _in_parallel(
    ctx: Context, names: Sequence[str], jobs: int, one: Callable[[str], Mapping[str, object]]
) -> list[Mapping[str, object]]:
    """``one`` for each guest in a child process, at most ``jobs`` at once (each run has its own
    proxy, element and PKG_TIMEOUT alarm); a guest's output is printed when it has finished, in
    one piece; failures are reported as with one job."""
    pending = list(names)
    running: dict[int, tuple[str, Any, Any]] = {}
    records: list[Mapping[str, object]] = []
    while pending or running:
        while pending and len(running) < jobs:
            name = pending.pop(0)
            # Closed when the child is reaped, below.
            text = tempfile.TemporaryFile("w+")  # noqa: SIM115
            record = tempfile.TemporaryFile("w+")  # noqa: SIM115
            ctx.stdout.flush()
            ctx.stderr.flush()
            pid = os.fork()
            if pid == 0:  # pragma: no cover - child process
                os._exit(_child(ctx, name, one, text, record))
            running[pid] = (name, text, record)
        pid, status = os.wait()
        name, text, record = running.pop(pid)
        code = os.waitstatus_to_exitcode(status)
        text.seek(0)
        record.seek(0)
        shown = text.read()
        if ctx.json:
            ctx.stderr.write(shown)
        else:
            ctx.stdout.write(shown)
        data = record.read()
        text.close()
        record.close()
        if code == 0 and data:
            records.append(json.loads(data))
            continue
        failure = _ChildFailed(data.strip() or f"exited {code}")
        failure.exit_code = _exit_code(code)
        ctx.fail(name, failure)
    order = {name: index for index, name in enumerate(names)}
    return sorted(records, key=lambda r: order.get(str(r.get("vserver")), 0))


def _exit_code(code: int) -> ExitCode:
    return ExitCode(code) if code in {int(c) for c in ExitCode} else ExitCode.INTERNAL


class _ChildFailed(VSError):
    """A guest's run in a child process failed (its message, its exit code)."""


def _child(
    ctx: Context, name: str, one: Callable[[str], Mapping[str, object]], text: Any, record: Any
) -> int:  # pragma: no cover - child process
    """One guest in a child: its output into ``text``, its record or error into ``record``."""
    ctx.stdout = ctx.stderr = text
    try:
        result = one(name)
    except VSError as exc:
        record.write(str(exc))
        code = int(exc.exit_code)
    except KeyboardInterrupt:
        record.write("interrupted")
        code = int(ExitCode.INTERRUPTED)
    except Exception as exc:
        record.write(f"internal error: {type(exc).__name__}: {exc}")
        code = int(ExitCode.INTERNAL)
    else:
        json.dump(to_jsonable(result), record)
        code = 0
    text.flush()
    record.flush()
    return code


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _is_tty(stream: object) -> bool:
    try:
        return os.isatty(stream.fileno())  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return False


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of vs-pkg: returns its exit status."""
    return run_command(build_parser(), handle, argv)
