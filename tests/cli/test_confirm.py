"""Confirmation prompts (DESIGN §4): asked only on a terminal, skipped with --yes; a "no" or end
of file exits 7 and changes nothing. The commands run on a real pseudo-terminal, as an
administrator types at them."""

from __future__ import annotations

import os
import select
import subprocess

import pytest

from tests.guests import BIN, Host, netns_prefix

pytestmark = [pytest.mark.privileged, pytest.mark.e2e]

PROMPT = b"[y/N] "


def on_terminal(host: Host, *argv: str, answer: bytes | None) -> tuple[int, str]:
    """Run a vs-* command with a pty as stdin, stdout and stderr; type ``answer`` at its prompt,
    or, with None, expect none. Returns the exit status and everything the terminal showed."""
    master, slave = os.openpty()
    process = subprocess.Popen(
        [*netns_prefix(host.netns), str(BIN / argv[0]), *argv[1:]],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=host.env,
    )
    os.close(slave)
    shown = b""
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 60)
            assert ready, f"{argv} hangs; the terminal shows {shown!r}"
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the command closed its end of the terminal
                break
            if not chunk:
                break
            shown += chunk
            if answer is not None and shown.endswith(PROMPT):
                os.write(master, answer)
        code = process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()  # by the PID this test started
            process.wait()
        os.close(master)
    text = shown.decode()
    assert (PROMPT.decode() in text) == (answer is not None), text
    return code, text


def enabled(host: Host, name: str) -> bool:
    return "ENABLED=yes" in (host.guests_dir / name / "guest.conf").read_text()


def test_vs_control_all_disable_asks_on_a_terminal_only(host: Host) -> None:
    host.define("web", "198.51.100.10")
    host.define("db", "198.51.100.11")
    # Enabling is not a wide or destructive change: no question, even on a terminal.
    code, _ = on_terminal(host, "vs-control", "--all", "--enable", answer=None)
    assert code == 0 and enabled(host, "web") and enabled(host, "db")

    for answer in (b"n\n", b"\n", b"whatever\n", b"\x04"):  # no, the default, nonsense, EOF
        code, shown = on_terminal(host, "vs-control", "--all", "--disable", answer=answer)
        assert code == 7, shown
        assert "Disable 2 guests (db, web)? [y/N]" in shown
        assert "vs-control: not confirmed: nothing was changed" in shown
        assert enabled(host, "web") and enabled(host, "db")

    code, shown = on_terminal(host, "vs-control", "--all", "--disable", answer=b"y\n")
    assert code == 0 and not enabled(host, "web") and not enabled(host, "db"), shown

    # --yes on a terminal, and no terminal at all (stdin a pipe): no question.
    host.run("vs-control", "--all", "--enable")
    code, shown = on_terminal(host, "vs-control", "--all", "--disable", "--yes", answer=None)
    assert code == 0 and not enabled(host, "web"), shown
    host.run("vs-control", "--all", "--enable")
    piped = host.run("vs-control", "--all", "--disable")
    assert "[y/N]" not in piped.stderr and not enabled(host, "web") and not enabled(host, "db")
    # --dry-run changes nothing: nothing to confirm. One guest: no question either.
    host.run("vs-control", "--all", "--enable")
    code, _ = on_terminal(host, "vs-control", "--all", "--disable", "--dry-run", answer=None)
    assert code == 0 and enabled(host, "db")
    code, _ = on_terminal(host, "vs-control", "--name", "web", "--disable", answer=None)
    assert code == 0 and not enabled(host, "web")


def test_vs_control_all_stop_answered_no_keeps_guests_running(host: Host) -> None:
    host.define("web", "198.51.100.10")
    host.run("vs-control", "--name", "web", "--start")
    code, shown = on_terminal(host, "vs-control", "--all", "--stop", answer=b"no\n")
    assert code == 7 and "Stop 1 guest (web)? [y/N]" in shown
    assert host.state("web") is not None
    code, shown = on_terminal(host, "vs-control", "--all", "--stop", answer=b"yes\n")
    assert code == 0 and "vsh-test:web:disabled:stopped" in shown
    assert host.state("web") is None


def test_vs_limit_and_vs_net_all_ask_too(host: Host) -> None:
    host.define("web", "198.51.100.10", cpu="1/2")
    conf = host.guests_dir / "web" / "guest.conf"
    before = conf.read_text()
    code, shown = on_terminal(host, "vs-limit", "--all", "--cpu", "1/3", answer=b"n\n")
    assert code == 7 and "Change the limits of 1 guest (web)? [y/N]" in shown
    assert conf.read_text() == before
    code, shown = on_terminal(host, "vs-limit", "--all", "--cpu", "1/3", answer=b"y\n")
    assert code == 0 and "CPU_LIMIT=1/3" in conf.read_text(), shown
    # Showing asks nothing.
    code, _ = on_terminal(host, "vs-limit", "--all", answer=None)
    assert code == 0

    code, shown = on_terminal(host, "vs-net", "--all", "--fw", "down", answer=b"n\n")
    assert code == 7 and "Take --fw down for 1 guest (web)? [y/N]" in shown
    # Bringing a layer up is not confirmed (it is refused here: the test host has NETWORK=none).
    code, shown = on_terminal(host, "vs-net", "--all", "--fw", "up", answer=None)
    assert code != 7, shown


def test_no_prompt_without_a_terminal_in_process() -> None:
    """The helper itself: a stream that is not a terminal is never read."""
    import argparse
    import io

    from vstools.cli.common import Context, confirm

    class Unread(io.StringIO):
        def readline(self, size: int | None = -1) -> str:
            raise AssertionError("read from a stream that is not a terminal")

    args = argparse.Namespace(yes=False, dry_run=False)
    ctx = Context("vs-x", args, {}, io.StringIO(), io.StringIO(), stdin=Unread())
    confirm(ctx, "Really?")
    assert ctx.stderr.getvalue() == ""
