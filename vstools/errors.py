"""The error hierarchy. Each error carries its exit code; only ``cli.common.run_command`` turns
errors into exit codes (borg's rule: library code raises, ``main()`` exits)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum, StrEnum


class ExitCode(IntEnum):
    """Exit codes shared by every ``vs-*`` command (documented in docs/exit-codes.md)."""

    OK = 0
    CONFIG = 1  # a configuration file is invalid (vs-check's "problems found")
    USAGE = 2  # bad command line (argparse's own convention)
    NOT_FOUND = 3  # no such guest, host or file
    STATE = 4  # the guest or host is not in a state that allows this (running, locked, in use)
    HOST = 5  # the host refused an operation; what was done has been rolled back
    ROLLBACK = 6  # an operation failed AND its rollback was incomplete: look at the host
    DECLINED = 7  # the administrator answered no to a confirmation prompt: nothing changed
    INTERNAL = 70  # sysexits EX_SOFTWARE: a bug; the traceback is in the log
    INTERRUPTED = 130  # SIGINT, after rolling back


class Severity(StrEnum):
    """Whether a Problem rejects its file (ERROR) or is only reported (WARNING)."""

    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, slots=True)
class Problem:
    """One finding in a configuration file, printed as ``path:line:col: message``."""

    path: str
    line: int
    col: int
    message: str
    severity: Severity = Severity.ERROR

    def __str__(self) -> str:
        prefix = "warning: " if self.severity is Severity.WARNING else ""
        return f"{self.path}:{self.line}:{self.col}: {prefix}{self.message}"


class VSError(Exception):
    """Base of every error the toolkit raises on purpose."""

    exit_code: ExitCode = ExitCode.HOST

    def lines(self) -> list[str]:
        """What to print on stderr, one item per line."""
        return [str(self)]


class UsageError(VSError):
    """The command line asks for something invalid or impossible as given (exit code USAGE)."""

    exit_code = ExitCode.USAGE


class NotFoundError(VSError):
    """No such guest, host, file or volume (exit code NOT_FOUND)."""

    exit_code = ExitCode.NOT_FOUND


class StateError(VSError):
    """The guest or host is not in a state that allows this: running, locked, in use."""

    exit_code = ExitCode.STATE


class HostError(VSError):
    """The host refused an operation; what was done has been rolled back."""

    exit_code = ExitCode.HOST


class RollbackError(VSError):
    """An operation failed and its rollback was incomplete: a human must look at the host."""

    exit_code = ExitCode.ROLLBACK


class Declined(VSError):
    """The administrator did not confirm (no, or end of file at the prompt)."""

    exit_code = ExitCode.DECLINED


class InvalidName(VSError):
    """A guest (or host) name that must never reach a path or a command line (catalogue D15)."""

    exit_code = ExitCode.USAGE


class ConfigError(VSError):
    """A configuration file (or several) rejected whole, with every problem found."""

    exit_code = ExitCode.CONFIG

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

    def lines(self) -> list[str]:
        """Each problem on a line of its own."""
        return [str(p) for p in self.problems]

    @classmethod
    def merge(cls, errors: Iterable[ConfigError]) -> ConfigError:
        """One ConfigError holding every problem of ``errors``, in order."""
        return cls([p for e in errors for p in e.problems])


class CommandError(HostError):
    """A subprocess failed. Carries the argv (as a copy-pasteable line), its status and stderr."""

    def __init__(self, cmdline: str, returncode: int, stderr: str) -> None:
        self.cmdline = cmdline
        self.returncode = returncode
        self.stderr = stderr
        lines = [line for line in stderr.strip().splitlines() if line.strip()]
        # The first line is the cause (tar, nft and rsync end with a generic summary line).
        detail = lines[0] if lines else "no error output"
        if len(lines) > 1:
            detail += f" (+{len(lines) - 1} more lines)"
        super().__init__(f"command failed with status {returncode}: {cmdline}: {detail}")
