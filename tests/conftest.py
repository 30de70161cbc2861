"""Test tiers (TESTING.md): unit always; privileged and e2e need root and namespaces, and in CI
(CI=true) a failed capability probe is a failure, not a skip. lab runs wherever qemu is (VS_LAB=0
turns it off outside CI) and, in CI, fails like them; bench runs on demand.

Every kernel object a test makes carries RUN_PREFIX and the session ends by checking that none
is left behind: a leak fails the run."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.leaks import find_leaks
from tests.probes import tier_problem

pytest_plugins = ("tests.guests", "tests.lab.vm", "tests.poolhosts")

# "vst" + 4 hex digits: 7 characters, leaving 8 for suffixes within IFNAMSIZ (15).
RUN_PREFIX = "vst" + secrets.token_hex(2)
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
ON_DEMAND = {"bench": "VS_BENCH"}
# Capability failures that fail the test in CI instead of skipping it.
REQUIRED_IN_CI = ("privileged", "e2e", "lab", "deb")


def _selected_by_marker(config: pytest.Config, tier: str) -> bool:
    return tier in (config.getoption("-m") or "")


def _tier_status(config: pytest.Config, tier: str) -> str | None:
    """None when the tier runs, else why it is skipped."""
    if tier == "lab":
        if os.environ.get("VS_LAB_INSIDE"):
            return "inside the lab VM already"
        if os.environ.get("VS_LAB") == "0" and not IN_CI and not _selected_by_marker(config, tier):
            return "turned off with VS_LAB=0"
    if tier in ON_DEMAND:
        if os.environ.get(ON_DEMAND[tier]) or _selected_by_marker(config, tier):
            return tier_problem(tier)
        return f"on demand: -m {tier} or {ON_DEMAND[tier]}=1"
    return tier_problem(tier)


def pytest_report_header(config: pytest.Config) -> list[str]:
    rows = [f"vs-tools run prefix {RUN_PREFIX}; CI={'yes' if IN_CI else 'no'}"]
    for tier in ("unit", "privileged", "e2e", "lab", "deb", "bench"):
        status = None if tier == "unit" else _tier_status(config, tier)
        rows.append(f"  tier {tier:<10} " + ("enabled" if status is None else f"SKIPPED: {status}"))
    return rows


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        for tier in ("privileged", "e2e", "lab", "deb", "bench"):
            if item.get_closest_marker(tier) is None:
                continue
            status = _tier_status(config, tier)
            if status is None:
                continue
            if IN_CI and tier in REQUIRED_IN_CI:
                # In CI the machine is known to have these capabilities: a missing one is a
                # broken runner, and a silent skip would hide it.
                item.user_properties.append(("capability", status))
            else:
                item.add_marker(pytest.mark.skip(reason=f"{tier}: {status}"))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    # A hook, not a usefixtures marker added above: an item's fixtures are fixed when it is
    # collected, so such a marker was silently ignored and the test ran without its capability.
    reason = dict(item.user_properties).get("capability")
    if reason is not None:
        pytest.fail(f"capability missing in CI (a skip would hide it): {reason}")


@pytest.fixture(scope="session")
def run_prefix() -> str:
    return RUN_PREFIX


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    leaks = find_leaks(RUN_PREFIX)
    if leaks:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        text = "\n".join(["kernel objects left behind by this run (a leak is a failure):", *leaks])
        if reporter is not None:
            reporter.write_line(text, red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def etc_tree(tmp_path: Path) -> Iterator[dict[str, str]]:
    """An environment whose VS_* directories all point into a temporary tree."""
    dirs = {name: tmp_path / name for name in ("etc", "guests", "root", "state", "run")}
    for directory in dirs.values():
        directory.mkdir()
    yield {
        "VS_ETC_DIR": str(dirs["etc"]),
        "VS_GUESTS_CONF_DIR": str(dirs["guests"]),
        "VS_ROOT_DIR": str(dirs["root"]),
        "VS_STATE_DIR": str(dirs["state"]),
        "VS_RUN_DIR": str(dirs["run"]),
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
    }
