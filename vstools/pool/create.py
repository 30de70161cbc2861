"""vs-create --host on the master: a guest made on one slave, its name, address and context
number checked against the whole pool first (DESIGN §10: "an address or name is never given
twice in the pool"). The slave's own vs-create does the work, with the slave's configuration;
the master only checks, chooses a context number free in the whole pool, and passes it on.
Creations from the master are taken one at a time (a lock on the master), so two of them
cannot both find the same address free."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address

from vstools.config.guest import MAX_CONTEXT
from vstools.errors import StateError
from vstools.host.ssh import Done
from vstools.pool.inventory import GuestRow, Inventory
from vstools.pool.scan import ask
from vstools.pool.slaves import Pool


@dataclass(frozen=True, slots=True)
class PoolView:
    """Every guest of the pool, as the slaves answered now (or, for one that did not, as last
    seen), and the slaves known only from the past."""

    rows: list[GuestRow]
    stale: list[str]  # slaves that did not answer: their guests as last seen


def pool_view(pool: Pool, inventory: Inventory) -> PoolView:
    """Ask every slave what it holds, record the answers; a slave that does not answer counts
    as last seen, and one never seen makes the pool unknown (StateError)."""
    stale = []
    for answer in pool.fan_out(ask):
        if answer.error is None and answer.value is not None:
            inventory.record_host(answer.host, answer.value["guests"], answer.value["host"])
            continue
        inventory.record_unreachable(answer.host, str(answer.error))
        if inventory.host_facts(answer.host) is None:
            raise StateError(
                f"{answer.error}: {answer.host} was never scanned, so what it holds is unknown;"
                " the pool's names, addresses and contexts cannot be checked"
            )
        stale.append(answer.host)
    known = {slave.host for slave in pool.slaves}
    return PoolView([row for row in inventory.guests() if row.host in known], stale)


def check_unique(rows: Sequence[GuestRow], name: str, ip: IPv4Address, context: int | None) -> None:
    """StateError when the pool has a guest ``name``, or one with address ``ip`` or context
    number ``context`` (pure)."""
    for row in rows:
        if row.name == name:
            raise StateError(f"guest {name} exists on {row.host} already")
        if row.ip == str(ip):
            raise StateError(f"{ip} is the address of {row.name} on {row.host}")
        if context is not None and row.context == context:
            raise StateError(f"context {context} is the context number of {row.name} on {row.host}")


def free_context(rows: Sequence[GuestRow], wanted: int) -> int:
    """``wanted`` if no guest of the pool has it, else the next number up that none has (pure)."""
    used = {row.context for row in rows if row.context is not None}
    context = wanted
    while context in used:
        context += 1
    if context > MAX_CONTEXT:
        raise StateError(f"no context number from {wanted} up is free in the pool")
    return context


def create_on(
    pool: Pool,
    inventory: Inventory,
    host: str,
    argv: Sequence[str],
    *,
    name: str,
    ip: IPv4Address,
    context: int | None,
    say: Callable[[str], None] = lambda _: None,
) -> Done:
    """Create guest ``name`` on the slave ``host`` by running its vs-create with ``argv`` (the
    options but --host and --context), once the pool has no such name, address or context.
    Without ``context``, the number the slave's CONTEXT_METHOD gives is used when it is free in
    the pool, else the next free one. The slave's own checks still apply; its answer is
    returned as it came (output, status)."""
    remote = pool.remote(host)
    view = pool_view(pool, inventory)
    for stale in view.stale:
        say(f"warning: {stale} did not answer: its guests are checked as last seen")
    check_unique(view.rows, name, ip, context)
    if context is None:
        planned = remote.run(["vs-create", "--dry-run", "--json", *argv], check=False)
        if planned.code != 0:
            return planned  # the slave's own checks refuse: its message, its status
        chosen = int(json.loads(planned.stdout)["context"])
        context = free_context(view.rows, chosen)
        if context != chosen:
            say(f"context {chosen} is taken in the pool: {name} gets {context}")
    done = remote.run(["vs-create", *argv, "--context", str(context)], check=False)
    if done.code == 0:
        answer = ask(remote)
        inventory.record_host(host, answer["guests"], answer["host"])
    return done
