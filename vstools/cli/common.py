"""What every ``vs-*`` command shares: common options, the context handed to handlers, output
in the original colon format or JSON, and the single place errors become exit codes."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn, TextIO

from vstools import __version__
from vstools.config.lexer import ValueProblem
from vstools.config.settings import Settings
from vstools.config.values import mb, memory_mb, parse_cpu_ratio, parse_guest_name, processes
from vstools.errors import ConfigError, Declined, ExitCode, VSError
from vstools.host.hostconfig import HostConfig
from vstools.host.journal import log, setup_logging
from vstools.paths import Paths
from vstools.serialize import to_jsonable

EXIT_CODES_EPILOG = (
    "exit codes: 0 ok, 1 invalid configuration, 2 usage, 3 not found, 4 wrong state or locked,"
    " 5 host error (rolled back), 6 rollback incomplete, 7 not confirmed (nothing changed),"
    " 70 internal error, 130 interrupted"
)


@dataclass(slots=True)
class Context:
    """Everything a command handler needs; host paths and streams are parameters (STYLE §5)."""

    prog: str
    args: argparse.Namespace
    env: Mapping[str, str]
    stdout: TextIO
    stderr: TextIO
    _host: HostConfig | None = field(default=None, repr=False)
    stdin: TextIO = field(default_factory=lambda: sys.stdin, repr=False)
    failures: list[VSError] = field(default_factory=list, repr=False)

    @property
    def json(self) -> bool:
        """Whether --json asks for JSON output instead of the colon format."""
        return bool(getattr(self.args, "json", False))

    @property
    def dry_run(self) -> bool:
        """Whether --dry-run asks to print what would be done and change nothing."""
        return bool(getattr(self.args, "dry_run", False))

    @property
    def host(self) -> HostConfig:
        """The host's configuration, loaded once for the whole command and passed down."""
        if self._host is None:
            self._host = HostConfig.load(self.env)
        return self._host

    @property
    def settings(self) -> Settings:
        """vs-tools.conf as parsed, from the host's configuration."""
        return self.host.settings

    @property
    def paths(self) -> Paths:
        """The directories in force (vs-tools.conf and the VS_* variables)."""
        return self.host.paths

    def fail(self, name: str, exc: VSError) -> None:
        """Report one guest's failure (``prog: NAME: message``); the others go on."""
        self.failures.append(exc)
        print(f"{self.prog}: {name}: {exc}", file=self.stderr)

    def exit_code(self) -> int:
        """The worst exit code of the failures reported, 0 without any."""
        return int(max((f.exit_code for f in self.failures), default=ExitCode.OK))

    @property
    def hostname(self) -> str:
        """This host's name in outputs: HOSTNAME of vs-tools.conf, else the system's short name."""
        return self.host.hostname()

    def emit_lines(self, lines: Iterable[str]) -> None:
        """Print each line on the command's stdout."""
        for line in lines:
            print(line, file=self.stdout)

    def emit_json(self, value: Any) -> None:
        """Print ``value`` on stdout as indented JSON (dataclasses, enums, addresses converted)."""
        import json  # --json only: the colon format is the common case

        json.dump(to_jsonable(value), self.stdout, indent=2, sort_keys=False)
        self.stdout.write("\n")

    def emit_rows(self, rows: Sequence[Mapping[str, object]], fields: Sequence[str]) -> None:
        """Colon-separated lines (the original format) or, with --json, a list of objects."""
        if self.json:
            self.emit_json([{k: row[k] for k in fields} for row in rows])
        else:
            self.emit_lines(":".join(str(row[k]) for k in fields) for row in rows)


Handler = Callable[[Context], int]


def arg_type(parse: Callable[[str], Any], name: str | None = None) -> Callable[[str], Any]:
    """Use a config value parser (same rules, same messages) for a command-line option."""

    def convert(text: str) -> Any:
        """The parsed value; the parser's problem becomes an argparse usage error (exit 2)."""

        try:
            return parse(text)
        except ValueProblem as exc:
            raise argparse.ArgumentTypeError(exc.message) from None

    convert.__name__ = name or getattr(parse, "__name__", "value").removeprefix("parse_")
    return convert


def new_parser(prog: str, description: str, *, mutating: bool) -> argparse.ArgumentParser:
    """A parser with the options every command has: --json, -v, --version, and for commands that
    change the host --dry-run and --yes."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=EXIT_CODES_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--json", action="store_true", help="machine-readable JSON output")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log every step and command line on stderr"
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    if mutating:
        parser.add_argument(
            "--dry-run", action="store_true", help="print what would be done and change nothing"
        )
        parser.add_argument(
            "-y",
            "--yes",
            action="store_true",
            help="do not ask for confirmation (prompts only appear on a terminal)",
        )
    return parser


def add_guest_selection(
    parser: argparse.ArgumentParser, *, required: bool = True, allow_all: bool = True
) -> None:
    """``--name NAME`` or ``--all``."""

    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument(
        "--name",
        metavar="NAME",
        type=arg_type(parse_guest_name, "name"),
        help="the guest to act on",
    )
    if allow_all:
        group.add_argument("--all", action="store_true", help="every guest of this host")


def add_limit_options(parser: argparse.ArgumentParser) -> None:
    """--rss, --disk, --tmpfs, --proc and --cpu, with the parsers of create.conf's values."""

    parser.add_argument("--rss", metavar="MB", type=arg_type(memory_mb), help="memory limit")
    parser.add_argument(
        "--disk",
        metavar="MB",
        type=arg_type(mb),
        help="disk limit (STORAGE: btrfs qgroup limit, lvm volume size; measured only on dir)",
    )
    parser.add_argument("--tmpfs", metavar="MB", type=arg_type(memory_mb), help="size of /tmp")
    parser.add_argument("--proc", metavar="N", type=arg_type(processes), help="process limit")
    parser.add_argument(
        "--cpu",
        metavar="A/B",
        type=arg_type(parse_cpu_ratio),
        help="share of the host's whole CPU capacity",
    )


def emit_record(ctx: Context, record: Mapping[str, object]) -> None:
    """One record as ``key:value`` lines, or a JSON object with --json."""
    if ctx.json:
        ctx.emit_json(dict(record))
    else:
        ctx.emit_lines(f"{key}:{'' if value is None else value}" for key, value in record.items())


def confirm(ctx: Context, question: str) -> None:
    """Ask ``question`` before a wide or destructive change, on a terminal only: nothing is
    asked with --yes or --dry-run, or when stdin is not a terminal (scripts, cron, the master
    over SSH). Anything but y or yes, and end of file, raises Declined (exit 7)."""
    if getattr(ctx.args, "yes", False) or ctx.dry_run or not _is_terminal(ctx.stdin):
        return
    print(f"{question} [y/N] ", end="", file=ctx.stderr, flush=True)
    answer = ctx.stdin.readline()
    if not answer.endswith("\n"):
        print(file=ctx.stderr)  # end of file: end the prompt's line
    if answer.strip().lower() not in ("y", "yes"):
        raise Declined("not confirmed: nothing was changed")


def selected_guests(ctx: Context) -> list[str]:
    """The guests a command acts on: every guest with --all, else the one named."""
    return ctx.host.guest_names() if getattr(ctx.args, "all", False) else [ctx.args.name]


def for_each_guest(
    ctx: Context, names: Sequence[str], act: Callable[[str], Mapping[str, object] | None]
) -> list[Mapping[str, object]]:
    """The rows ``act`` returns for each guest. With ``--name`` an error is the command's (unless
    one was already reported for it); otherwise it is reported and the others are handled."""
    rows = []
    for name in names:
        try:
            row = act(name)
        except VSError as exc:
            if not getattr(ctx.args, "all", False) and not ctx.failures:
                raise
            ctx.fail(name, exc)
            continue
        if row is not None:
            rows.append(row)
    return rows


def progress_line(ctx: Context) -> Callable[[Any], None] | None:
    """On a terminal, a callback that redraws one progress line on stderr (rsync's figures);
    elsewhere None: the command prints a summary line when it is done."""
    if not _is_terminal(ctx.stderr):
        return None

    def show(figures: Any) -> None:
        """Redraw the line."""
        ctx.stderr.write(
            f"\r  {figures.percent:3d}%  {figures.bytes / (1 << 20):9.1f} MB"
            f"  {figures.rate:>12}  {figures.eta:>10} "
        )
        ctx.stderr.flush()

    return show


def guests_phrase(names: Sequence[str], *, shown: int = 8) -> str:
    """``3 guests (a, b, c)`` for a prompt; long lists are cut."""
    listed = ", ".join(names[:shown])
    if len(names) > shown:
        listed += f", ... ({len(names) - shown} more)"
    return f"{len(names)} guest{'s' if len(names) != 1 else ''} ({listed})"


def _is_terminal(stream: TextIO) -> bool:
    try:
        return os.isatty(stream.fileno())
    except (AttributeError, OSError, ValueError):  # a StringIO, a closed stream
        return False


def run_command(
    parser: argparse.ArgumentParser,
    handler: Handler,
    argv: Sequence[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    stdin: TextIO | None = None,
) -> int:
    """Parse ``argv``, run ``handler``, and turn what it raised into an exit code."""
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help/--version exit 0, usage errors exit 2
        return int(exc.code or 0)
    ctx = Context(
        parser.prog, args, os.environ if env is None else env, out, err, stdin=stdin or sys.stdin
    )
    try:
        try:
            syslog_socket = ctx.settings.syslog_socket if ctx.settings.syslog else None
        except ConfigError:
            # Commands that need the settings will fail on them with every problem listed;
            # vs-check reports them itself. Journal to the default socket meanwhile.
            syslog_socket = Settings().syslog_socket
        verbose = bool(getattr(args, "verbose", False))
        # Only -v shows why changes would not be journalled (below): otherwise syslog is
        # reached at the first change journalled, and never by a command that only shows.
        problem = setup_logging(verbose=verbose, syslog_socket=syslog_socket, deferred=not verbose)
        if problem and hasattr(args, "dry_run") and not args.dry_run:
            log.debug("%s: changes are not journalled (%s)", parser.prog, problem)
        return handler(ctx)
    except VSError as exc:
        return _report(ctx, exc.exit_code, exc.lines(), exc)
    except KeyboardInterrupt:
        return _report(ctx, ExitCode.INTERRUPTED, ["interrupted"], None)
    except BrokenPipeError:
        # The reader went away (`vs-control --all | head`): not an error worth a traceback.
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - silence the interpreter's flush
        return ExitCode.OK
    except Exception as exc:  # a bug: say so plainly, with the traceback in the log
        log.exception("internal error")
        return _report(
            ctx, ExitCode.INTERNAL, [f"internal error: {type(exc).__name__}: {exc}"], None
        )


def finish(code: int) -> NoReturn:
    """End the command's process with ``code`` once its work is done: standard streams and the
    journal flushed, then ``os._exit``, without the interpreter's own shutdown, which frees
    every loaded module one by one (about 35 ms once the start machinery is loaded, longer
    than many a command's work). Only for a command's own process, never for a caller's."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    logging.shutdown()
    os._exit(code)


def _report(ctx: Context, code: ExitCode, lines: list[str], exc: VSError | None) -> int:
    if ctx.json:
        payload: dict[str, Any] = {"error": "\n".join(lines), "exit_code": int(code)}
        problems = getattr(exc, "problems", None)
        if problems is not None:
            payload["problems"] = [to_jsonable(p) for p in problems]
        ctx.emit_json(payload)
    for line in lines:
        print(f"{ctx.prog}: {line}" if not _is_located(line) else line, file=ctx.stderr)
    return int(code)


def _is_located(line: str) -> bool:
    """``path:line:col: ...`` lines are printed as they are, like a compiler's."""
    head = line.split(": ", 1)[0]
    parts = head.rsplit(":", 2)
    return len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit()
