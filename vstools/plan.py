"""Plan, then apply: an operation that changes the host is a list of steps, each able to
describe itself and undo what it did. ``--dry-run`` prints the descriptions; a failure undoes
the steps already done, newest first, and the error says what was rolled back."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from vstools.errors import HostError, RollbackError, VSError

log = logging.getLogger("vstools.plan")


@dataclass(frozen=True, slots=True)
class Step:
    """One mutating step. ``undo`` may be None for steps that change nothing durable."""

    description: str
    apply: Callable[[], None]
    undo: Callable[[], None] | None = None


@dataclass(slots=True)
class Outcome:
    """What ``apply_steps`` did: the descriptions of the steps done and of those rolled back
    (both empty after a dry run)."""

    done: list[str] = field(default_factory=list)
    rolled_back: list[str] = field(default_factory=list)


def describe(steps: Sequence[Step]) -> list[str]:
    """The steps' descriptions, in order (what ``--dry-run`` prints)."""
    return [step.description for step in steps]


def apply_steps(steps: Sequence[Step], *, dry_run: bool = False) -> Outcome:
    """Apply ``steps`` in order; on failure undo the done ones in reverse and re-raise.

    The raised error's message gains which step failed and what was rolled back; if an undo
    itself fails the error becomes RollbackError, because the host now needs a human."""
    outcome = Outcome()
    if dry_run:
        for step in steps:
            log.info("would: %s", step.description)
        return outcome
    done: list[Step] = []
    for step in steps:
        log.info("step: %s", step.description)
        try:
            step.apply()
        except BaseException as exc:
            failures = _undo(done, outcome)
            summary = _summary(step, exc, outcome, failures)
            if failures:
                raise RollbackError(summary) from exc
            if isinstance(exc, VSError):
                exc.args = (summary,)
                raise
            if isinstance(exc, OSError | RuntimeError | ValueError):
                raise HostError(summary) from exc
            raise
        done.append(step)
        outcome.done.append(step.description)
    return outcome


def _undo(done: list[Step], outcome: Outcome) -> list[str]:
    failures = []
    for step in reversed(done):
        if step.undo is None:
            continue
        try:
            step.undo()
            outcome.rolled_back.append(step.description)
            log.info("undone: %s", step.description)
        except Exception as exc:  # every undo is attempted, whatever the others did
            failures.append(f"{step.description}: {exc}")
            log.error("undo failed: %s: %s", step.description, exc)
    return failures


def _summary(step: Step, exc: BaseException, outcome: Outcome, failures: list[str]) -> str:
    text = f"{step.description}: {exc}"
    if outcome.rolled_back:
        text += "; rolled back: " + ", ".join(outcome.rolled_back)
    else:
        text += "; nothing to roll back"
    if failures:
        text += "; ROLLBACK FAILED: " + "; ".join(failures)
    return text


def discard(_: object) -> None:
    """Drop a result, for a step or hook that must return None (``lambda: discard(f())``)."""
    return None
