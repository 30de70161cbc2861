"""The listening TCP sockets of a namespace from sock_diag (vstools.host.sockdiag) are the ones
its /proc/PID/net/tcp and tcp6 show, in the same words, for the monitor's socket check (M7: it
reads, it never runs anything of the guest)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from vstools.host.sockdiag import tcp_listening
from vstools.monitor.sample import listening_sockets

pytestmark = pytest.mark.privileged

# Listens in a network namespace of its own (unshare --net: it goes when the process goes).
LISTENER = """
import socket, sys, time
socket.socket().bind(("127.0.0.1", 7))  # bound, not listening: not listed
kept = []
for family, address in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET, "0.0.0.0"),
                        (socket.AF_INET6, "::"), (socket.AF_INET6, "::1")):
    s = socket.socket(family)
    s.bind((address, 0))
    s.listen()
    kept.append(s)
print("ready", flush=True)
time.sleep(60)
"""
UNSHARE_LO_UP = ["unshare", "--net", "--", "sh", "-c", 'ip link set lo up && exec "$0" -c "$1"']


def test_sock_diag_lists_what_proc_net_tcp_lists() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: unshare --net and setns")
    child = subprocess.Popen(
        # lo up in the new namespace (127.0.0.1 and ::1 live there), then the listener.
        [*UNSHARE_LO_UP, sys.executable, LISTENER],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        pid = child.pid  # unshare and sh exec: the listener is the same process
        deadline = time.monotonic() + 5
        while os.readlink(f"/proc/{pid}/ns/net") == os.readlink("/proc/self/ns/net"):
            assert time.monotonic() < deadline, "the listener never entered its namespace"
            time.sleep(0.01)
        found = tcp_listening(pid)
        # proc="/proc/" is the same tree, but not "/proc": listening_sockets reads the files.
        from_files = {s for s in listening_sockets(pid, proc="/proc/") if s.startswith("tcp")}
        assert found == from_files
        assert len(found) == 4 and "tcp 127.0.0.1:7" not in found
        assert {s.split()[0] for s in found} == {"tcp", "tcp6"}
        assert found <= listening_sockets(pid)  # the monitor's own path takes sock_diag's
    finally:
        child.kill()
        child.wait()
