"""The pool's test hosts (harness.pool) as fixtures: a master and three slaves shared by the
tests of a session (set up once, well under a second each); ``pool`` hands them to a test with
no guest on any of them, and removes whatever the test made when it ends, also when it fails."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from harness.pool import (
    ADDRESSES,
    MASTER,
    SESSION_PATH,
    SLAVES,
    Pool,
    PoolHost,
    kill_netns_processes,
    pool_up,
    stop_guests,
    wipe,
)

__all__ = ["ADDRESSES", "MASTER", "SESSION_PATH", "SLAVES", "Pool", "PoolHost",
           "kill_netns_processes", "stop_guests"]  # fmt: skip


@pytest.fixture(scope="session")
def pool_hosts(tmp_path_factory: pytest.TempPathFactory, run_prefix: str) -> Iterator[Pool]:
    """The master and its three slaves, for the whole session."""
    with pool_up(tmp_path_factory.mktemp("pool"), run_prefix) as hosts:
        yield hosts


@pytest.fixture
def pool(pool_hosts: Pool) -> Iterator[Pool]:
    """The pool with no guest anywhere and its configuration as set up; what the test made or
    changed is undone after it."""
    for host in pool_hosts.hosts:
        wipe(host)
    yield pool_hosts
    for host in pool_hosts.hosts:
        wipe(host)
        for path in (host.base / "etc").iterdir():
            if path.suffix == ".conf" and path not in pool_hosts.configs:
                path.unlink()
    for path, text in pool_hosts.configs.items():
        path.write_text(text)
