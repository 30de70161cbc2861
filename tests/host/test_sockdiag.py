"""The listening sockets of a namespace from sock_diag (vstools.host.sockdiag) are the ones its
/proc/PID/net/tcp, tcp6, udp, udp6 and unix show, in the same words, for the monitor's socket
check (M7: it reads, it never runs anything of the guest)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vstools.host.sockdiag import sockets_listening
from vstools.monitor.sample import listening_sockets

pytestmark = pytest.mark.privileged

# Listens in a network namespace of its own (unshare --net: it goes when the process goes).
LISTENER = """
import os, socket, sys, time
socket.socket().bind(("127.0.0.1", 7))  # bound, not listening: not listed
kept = []
for family, address in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET, "0.0.0.0"),
                        (socket.AF_INET6, "::"), (socket.AF_INET6, "::1")):
    s = socket.socket(family)
    s.bind((address, 0))
    s.listen()
    kept.append(s)
for family, address in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::1")):
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.bind((address, 0))
    kept.append(s)
connected = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
connected.connect(("127.0.0.1", 9))  # connected UDP: not listed
for name in ("\\0vst-abstract", os.environ["VST_UNIX_PATH"]):
    s = socket.socket(socket.AF_UNIX)
    s.bind(name)
    s.listen()
    kept.append(s)
socket.socket(socket.AF_UNIX).bind("\\0vst-bound")  # bound, not listening: not listed
print("ready", flush=True)
time.sleep(60)
"""
UNSHARE_LO_UP = ["unshare", "--net", "--", "sh", "-c", 'ip link set lo up && exec "$0" -c "$1"']


def test_sock_diag_lists_what_proc_net_lists(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: unshare --net and setns")
    path = tmp_path / "vst.sock"
    child = subprocess.Popen(
        # lo up in the new namespace (127.0.0.1 and ::1 live there), then the listener.
        [*UNSHARE_LO_UP, sys.executable, LISTENER],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "VST_UNIX_PATH": str(path)},
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        pid = child.pid  # unshare and sh exec: the listener is the same process
        deadline = time.monotonic() + 5
        while os.readlink(f"/proc/{pid}/ns/net") == os.readlink("/proc/self/ns/net"):
            assert time.monotonic() < deadline, "the listener never entered its namespace"
            time.sleep(0.01)
        found, missing = sockets_listening(pid)
        assert missing == []  # udp_diag and unix_diag on this kernel
        # proc="/proc/" is the same tree, but not "/proc": listening_sockets reads the files.
        assert found == listening_sockets(pid, proc="/proc/")
        kinds = [s.split()[0] for s in found]
        assert {k: kinds.count(k) for k in set(kinds)} == {
            "tcp": 2,
            "tcp6": 2,
            "udp": 1,
            "udp6": 1,
            "unix": 2,
        }
        assert "tcp 127.0.0.1:7" not in found
        assert {"unix @vst-abstract", f"unix {path}"} < found
        assert found == listening_sockets(pid)  # the monitor's own path: sock_diag's
    finally:
        child.kill()
        child.wait()
