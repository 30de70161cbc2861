"""Where a guest is in the pool, asked now of every slave (the inventory is only a cache): the
hosts that hold it, in what state, and the slaves that could not say."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vstools.errors import NotFoundError, StateError
from vstools.host.ssh import Remote
from vstools.pool.slaves import Pool


@dataclass(frozen=True, slots=True)
class Whereabouts:
    """The slaves holding one guest (their facts of it), and those that did not answer."""

    name: str
    holders: dict[str, dict[str, Any]] = field(default_factory=dict)
    unreachable: dict[str, str] = field(default_factory=dict)

    def running_on(self) -> list[str]:
        """The slaves where the guest runs."""
        return [host for host, facts in self.holders.items() if facts.get("running")]

    def only(self) -> str:
        """The one slave holding the guest; NotFoundError, or StateError when it is on several
        (then say which with --host)."""
        if not self.holders:
            missing = f" ({', '.join(self.unreachable)} did not answer)" if self.unreachable else ""
            raise NotFoundError(f"no slave holds guest {self.name}{missing}")
        if len(self.holders) > 1:
            raise StateError(
                f"guest {self.name} is on {', '.join(sorted(self.holders))}: say which with --host"
            )
        return next(iter(self.holders))


def locate(pool: Pool, name: str) -> Whereabouts:
    """Ask every slave whether it holds ``name``."""

    def ask(remote: Remote) -> dict[str, Any] | None:
        """The slave's facts of the guest, None when it does not hold it."""
        try:
            facts: dict[str, Any] = remote.call("guest_facts", name)
        except NotFoundError:
            return None
        return facts

    found = Whereabouts(name)
    for answer in pool.fan_out(ask):
        if answer.error is not None:
            found.unreachable[answer.host] = str(answer.error)
        elif answer.value is not None:
            found.holders[answer.host] = answer.value
    return found
