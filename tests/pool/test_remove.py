"""vs-remove --host from the master, over SSH: refused for a running guest and for the last copy
in the pool unless --force; journalled; the inventory follows."""

from __future__ import annotations

import pytest

from tests.poolhosts import Pool

pytestmark = [pytest.mark.privileged, pytest.mark.e2e]


def test_remove_from_a_slave(pool: Pool) -> None:
    one, two = pool.slave("vsh-01"), pool.slave("vsh-02")
    one.run("vs-create", "--name", "web", "--interface", "198.51.100.10", "--context", "101")
    last = pool.master.run("vs-remove", "--name", "web", "--host", "vsh-01", check=False)
    assert last.returncode == 4 and "the last copy of guest web" in last.stderr
    two.run("vs-create", "--name", "web", "--interface", "198.51.100.10", "--context", "101")
    one.run("vs-control", "--name", "web", "--start")
    running = pool.master.run("vs-remove", "--name", "web", "--host", "vsh-01", check=False)
    assert running.returncode == 4 and "runs on vsh-01" in running.stderr
    assert one.state("web") is not None
    pool.master.run("vs-remove", "--name", "web", "--host", "vsh-01", "--force")
    assert one.guests() == [] and one.state("web") is None
    assert pool.master.run("vs-scan").stdout == "vsh-02:web:disabled:stopped\n"
    forced = pool.master.run("vs-remove", "--name", "web", "--host", "vsh-02", "--force")
    assert forced.returncode == 0 and two.guests() == []
    unknown = pool.master.run("vs-remove", "--name", "web", "--host", "vsh-09", check=False)
    assert unknown.returncode == 2 and "is not a slave" in unknown.stderr
    gone = pool.master.run("vs-remove", "--name", "web", "--host", "vsh-01", check=False)
    assert gone.returncode == 3 and "vsh-01 holds no guest web" in gone.stderr
