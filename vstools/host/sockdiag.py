"""The listening sockets of a network namespace, asked of the kernel with sock_diag netlink
dumps (what ``ss -tuxl`` does), read-only: TCP in the LISTEN state, bound unconnected UDP,
listening unix sockets, written as the monitor's /proc/PID/net readers write them.

Why not /proc/PID/net/tcp: to print that file the kernel walks its whole established-socket
hash table (sized by the host's memory, shared by all namespaces) for every read, about 3.5 ms
of CPU here even in a namespace with no socket; the monitor reads tcp and tcp6 of every guest
at every check. A sock_diag dump asking for the LISTEN state only walks the listening sockets.
udp, udp6 and unix cost less as files (0.05 ms each here), but three more dumps on the socket
already open cost less still. Raw AF_NETLINK, without pyroute2 (vstools.host.netlink's door for
links and routes): the monitor would pay its import and its per-message parsing for small
dumps."""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
import threading
from collections.abc import Iterator

from vstools.host.syscalls import CLONE_NEWNET, setns

# linux/netlink.h, linux/sock_diag.h, linux/inet_diag.h, net/tcp_states.h
NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
TCP_CLOSE = 7  # an unconnected UDP socket's state
TCP_LISTEN = 10
UDIAG_SHOW_NAME = 0x1  # linux/unix_diag.h
UNIX_DIAG_NAME = 0
_NLMSGHDR = struct.Struct("=IHHII")
# struct inet_diag_req_v2: family, protocol, ext, pad, states, then a zeroed inet_diag_sockid
# (48 bytes: ports, addresses, interface, cookie).
_REQ = struct.Struct("=BBBBI48x")
# struct unix_diag_req: family, protocol, pad, states, inode, show, cookie; the answer's
# struct unix_diag_msg (family, type, state, pad, inode, cookie) is 16 bytes.
_UNIX_REQ = struct.Struct("=BBHIII8x")
_UNIX_MSG_SIZE = 16


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


def _messages(sock: socket.socket, request: bytes) -> Iterator[tuple[bytes, int, int]]:
    """Send one dump request; yield each answer: the data, where its body starts and ends."""
    header = _NLMSGHDR.pack(
        _NLMSGHDR.size + len(request), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, 1, 0
    )
    sock.send(header + request)
    while True:
        data = sock.recv(65536)
        if not data:
            return
        offset = 0
        while offset + _NLMSGHDR.size <= len(data):
            length, kind, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, offset)
            body = offset + _NLMSGHDR.size
            if kind == NLMSG_DONE:
                return
            if kind == NLMSG_ERROR:
                code = -struct.unpack_from("=i", data, body)[0]
                raise OSError(code, f"sock_diag: {os.strerror(code)}")
            yield data, body, offset + length
            offset += (length + 3) & ~3


def _dump_inet(sock: socket.socket, kind: str) -> set[str]:
    """One kind's sockets (tcp LISTEN, udp unconnected) as ``tcp ADDR:PORT``,
    ``udp6 [ADDR]:PORT``."""
    family = socket.AF_INET6 if kind.endswith("6") else socket.AF_INET
    tcp = kind.startswith("tcp")
    protocol = socket.IPPROTO_TCP if tcp else socket.IPPROTO_UDP
    state = TCP_LISTEN if tcp else TCP_CLOSE
    size = 16 if family == socket.AF_INET6 else 4
    found: set[str] = set()
    for data, body, _end in _messages(sock, _REQ.pack(family, protocol, 0, 0, 1 << state)):
        # struct inet_diag_msg: family, state, timer, retrans, then the sockid: source
        # port (network order), destination port, source address.
        port = struct.unpack_from("!H", data, body + 4)[0]
        raw = data[body + 8 : body + 8 + size]
        if size == 4:
            found.add(f"{kind} {socket.inet_ntoa(raw)}:{port}")
        else:
            found.add(f"{kind} [{ipaddress.IPv6Address(raw)}]:{port}")
    return found


def _dump_unix(sock: socket.socket) -> set[str]:
    """The listening unix sockets that have a name, as /proc/net/unix prints them: ``unix
    /run/x.sock``, ``unix @name`` (abstract), a NUL byte of the name printed as ``@``."""
    found: set[str] = set()
    request = _UNIX_REQ.pack(socket.AF_UNIX, 0, 0, 1 << TCP_LISTEN, 0, UDIAG_SHOW_NAME)
    for data, body, end in _messages(sock, request):
        offset = body + _UNIX_MSG_SIZE
        while offset + 4 <= end:  # the attributes (struct rtattr: length, type)
            size, kind = struct.unpack_from("=HH", data, offset)
            if size < 4:
                break
            if kind == UNIX_DIAG_NAME:
                name = data[offset + 4 : offset + size]
                # A path name ends with its NUL; an abstract one starts with a NUL.
                name = name[:-1] if name[:1] != b"\0" else name
                found.add("unix " + name.replace(b"\0", b"@").decode(errors="replace"))
            offset += (size + 3) & ~3
    return found


KINDS = ("tcp", "tcp6", "udp", "udp6", "unix")


def _dump_all(sock: socket.socket) -> tuple[set[str], list[str]]:
    """Every kind's listening sockets, and the kinds this kernel cannot list (its udp_diag or
    unix_diag module missing: ENOENT), for the caller to read from /proc."""
    found: set[str] = set()
    missing = []
    for kind in KINDS:
        try:
            found |= _dump_unix(sock) if kind == "unix" else _dump_inet(sock, kind)
        except OSError as exc:
            if kind.startswith("tcp") or exc.errno != errno.ENOENT:
                raise
            missing.append(kind)
    return found, missing


def sockets_listening(pid: int) -> tuple[set[str], list[str]]:
    """The listening sockets of the network namespace of ``pid`` (``tcp 0.0.0.0:22``,
    ``tcp6 [::]:80``, ``udp 0.0.0.0:53``, ``unix /run/x.sock``), and the kinds of ``KINDS`` the
    kernel could not list. OSError when the namespace cannot be entered or asked."""
    with _socket_in(pid) as sock:
        return _dump_all(sock)


class ListeningSockets:
    """``sockets_listening`` for one guest, check after check: its socket is kept (one
    descriptor per guest) and made anew only when the process's network namespace is another
    one (the guest restarted). Entering the namespace costs more than asking it."""

    def __init__(self) -> None:
        self._namespace: tuple[int, int] | None = None
        self._sock: socket.socket | None = None

    def __call__(self, pid: int) -> tuple[set[str], list[str]]:
        # The socket holds its namespace: while it is open, no other one can get its inode.
        namespace = (pid, os.stat(f"/proc/{pid}/ns/net").st_ino)
        if self._sock is None or namespace != self._namespace:
            self.close()
            self._sock, self._namespace = _socket_in(pid), namespace
        try:
            return _dump_all(self._sock)
        except OSError:
            self.close()
            raise

    def close(self) -> None:
        """Close the kept socket (the next call makes one)."""
        if self._sock is not None:
            self._sock.close()
        self._sock, self._namespace = None, None
