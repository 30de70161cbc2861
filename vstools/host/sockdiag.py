"""The listening TCP sockets of a network namespace, asked of the kernel with one sock_diag
netlink dump (what ``ss -tln`` does), read-only.

Why not /proc/PID/net/tcp: to print that file the kernel walks its whole established-socket
hash table (sized by the host's memory, shared by all namespaces) for every read, about 3.5 ms
of CPU here even in a namespace with no socket; the monitor reads tcp and tcp6 of every guest
at every check. A sock_diag dump asking for the LISTEN state only walks the listening sockets.
Raw AF_NETLINK, without pyroute2 (vstools.host.netlink's door for links and routes): the
monitor would pay its import and its per-message parsing for two small dumps."""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
import threading

from vstools.host.syscalls import CLONE_NEWNET, setns

# linux/netlink.h, linux/sock_diag.h, linux/inet_diag.h, net/tcp_states.h
NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
TCP_LISTEN = 10
_NLMSGHDR = struct.Struct("=IHHII")
# struct inet_diag_req_v2: family, protocol, ext, pad, states, then a zeroed inet_diag_sockid
# (48 bytes: ports, addresses, interface, cookie).
_REQ = struct.Struct("=BBBBI48x")


def _socket_in(pid: int) -> socket.socket:
    """A sock_diag socket in the network namespace of ``pid``. A thread of its own enters the
    namespace, makes the socket (bound to that namespace for its life) and ends, so no thread
    of the caller ever changes namespace."""
    made: list[socket.socket] = []
    failed: list[OSError] = []

    def _enter() -> None:
        try:
            fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            try:
                setns(fd, CLONE_NEWNET)
            finally:
                os.close(fd)
            made.append(socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG))
        except OSError as exc:
            failed.append(exc)

    thread = threading.Thread(target=_enter, name=f"sockdiag-{pid}")
    thread.start()
    thread.join()
    if failed:
        raise failed[0]
    return made[0]


def _dump(sock: socket.socket, family: int) -> set[str]:
    """The LISTEN sockets of one address family, as ``tcp ADDR:PORT`` / ``tcp6 [ADDR]:PORT``."""
    request = _REQ.pack(family, socket.IPPROTO_TCP, 0, 0, 1 << TCP_LISTEN)
    header = _NLMSGHDR.pack(
        _NLMSGHDR.size + len(request), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, 1, 0
    )
    sock.send(header + request)
    found: set[str] = set()
    size = 4 if family == socket.AF_INET else 16
    while True:
        data = sock.recv(65536)
        offset = 0
        while offset + _NLMSGHDR.size <= len(data):
            length, kind, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, offset)
            body = offset + _NLMSGHDR.size
            if kind == NLMSG_DONE:
                return found
            if kind == NLMSG_ERROR:
                code = -struct.unpack_from("=i", data, body)[0]
                raise OSError(code, f"sock_diag: {os.strerror(code)}")
            # struct inet_diag_msg: family, state, timer, retrans, then the sockid: source
            # port (network order), destination port, source address.
            port = struct.unpack_from("!H", data, body + 4)[0]
            raw = data[body + 8 : body + 8 + size]
            if family == socket.AF_INET:
                found.add(f"tcp {socket.inet_ntoa(raw)}:{port}")
            else:
                found.add(f"tcp6 [{ipaddress.IPv6Address(raw)}]:{port}")
            offset += (length + 3) & ~3
        if not data:
            return found


def tcp_listening(pid: int) -> set[str]:
    """The listening TCP sockets (IPv4 and IPv6) of the network namespace of ``pid``, written as
    /proc/net/tcp would give them (``tcp 0.0.0.0:22``, ``tcp6 [::]:80``). OSError when the
    namespace cannot be entered or asked."""
    with _socket_in(pid) as sock:
        return _dump(sock, socket.AF_INET) | _dump(sock, socket.AF_INET6)


class ListeningTcp:
    """``tcp_listening`` for one guest, check after check: its socket is kept (one descriptor
    per guest) and made anew only when the process's network namespace is another one (the
    guest restarted). Entering the namespace costs more than asking it."""

    def __init__(self) -> None:
        self._namespace: tuple[int, int] | None = None
        self._sock: socket.socket | None = None

    def __call__(self, pid: int) -> set[str]:
        # The socket holds its namespace: while it is open, no other one can get its inode.
        namespace = (pid, os.stat(f"/proc/{pid}/ns/net").st_ino)
        if self._sock is None or namespace != self._namespace:
            self.close()
            self._sock, self._namespace = _socket_in(pid), namespace
        try:
            return _dump(self._sock, socket.AF_INET) | _dump(self._sock, socket.AF_INET6)
        except OSError:
            self.close()
            raise

    def close(self) -> None:
        """Close the kept socket (the next call makes one)."""
        if self._sock is not None:
            self._sock.close()
        self._sock, self._namespace = None, None
