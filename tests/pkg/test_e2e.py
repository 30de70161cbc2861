"""vs-pkg on a real Debian guest, through the proxy and its one firewall element."""

from __future__ import annotations

import pytest

from tests.pkg.conftest import GUEST, PkgEnv

pytestmark = [pytest.mark.e2e]


def test_install_through_the_proxy_leaves_the_ruleset_as_it_was(pkg_env: PkgEnv) -> None:
    before = pkg_env.ruleset()
    result = pkg_env.pkg("--name", GUEST, "--update_sources", "--install", "vsthello")
    assert pkg_env.installed("vsthello") == "1.0", result.stderr
    assert pkg_env.ruleset() == before
