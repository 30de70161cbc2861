"""vs-create --host on the master: the guest is made on the slave with the slave's own
configuration, and only once no guest of the pool has its name, address or context number;
the context number is chosen free in the whole pool."""

from __future__ import annotations

import pytest

from tests.poolhosts import Pool

pytestmark = [pytest.mark.privileged, pytest.mark.e2e]


def _record(text: str) -> dict[str, str]:
    return dict(line.split(":", 1) for line in text.splitlines())


def test_create_on_a_slave_checks_the_whole_pool(pool: Pool) -> None:
    master = pool.master
    made = master.run("vs-create", "--host", "vsh-01", "--name", "web",
                      "--interface", "198.51.100.10")  # fmt: skip
    first = _record(made.stdout)
    assert pool.slave("vsh-01").guests() == ["web"]
    # The slave's counter (CONTEXT_METHOD=cnt) gives vsh-02 the same number: the master
    # passes the next one free in the pool instead.
    made = master.run("vs-create", "--host", "vsh-02", "--name", "db",
                      "--interface", "198.51.100.11")  # fmt: skip
    second = _record(made.stdout)
    assert second["context"] != first["context"]
    assert f"context {first['context']} is taken in the pool" in made.stderr
    for argv, why in (
        (["--name", "web", "--interface", "198.51.100.12"], "guest web exists on vsh-01"),
        (["--name", "new", "--interface", "198.51.100.11"],
         "198.51.100.11 is the address of db on vsh-02"),
        (["--name", "new", "--interface", "198.51.100.12", "--context", first["context"]],
         f"context {first['context']} is the context number of web on vsh-01"),
    ):  # fmt: skip
        refused = master.run("vs-create", "--host", "vsh-03", *argv, check=False)
        assert refused.returncode == 4 and why in refused.stderr, refused.stderr
    assert pool.slave("vsh-03").guests() == []
    assert master.run("vs-scan").stdout.splitlines() == [
        "vsh-01:web:disabled:stopped",
        "vsh-02:db:disabled:stopped",
    ]


def test_create_refuses_when_a_slave_was_never_seen(pool: Pool) -> None:
    (pool.master.base / "etc" / "slaves.conf").write_text("vsh-01\nvsh-02\nvsh-03\nvst-nowhere\n")
    refused = pool.master.run("vs-create", "--host", "vsh-01", "--name", "web",
                              "--interface", "198.51.100.10", check=False)  # fmt: skip
    assert refused.returncode == 4
    assert "vst-nowhere was never scanned" in refused.stderr
    assert pool.slave("vsh-01").guests() == []


def test_the_slaves_own_checks_still_apply(pool: Pool) -> None:
    refused = pool.master.run("vs-create", "--host", "vsh-01", "--name", "web",
                              "--interface", "198.51.100.10", "--template", "/nonexistent.tar",
                              check=False)  # fmt: skip
    assert refused.returncode != 0 and "nonexistent" in refused.stderr
    assert pool.slave("vsh-01").guests() == []
