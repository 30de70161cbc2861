"""A package mirror for vs-pkg's tests: a local apt repository the test builds (small packages
made with dpkg-deb, indexed with apt-ftparchive, unsigned: the guest's sources say
``[trusted=yes]``), served over HTTP and HTTPS (a throwaway CA) by a process in a network
namespace of the test, and a hosts file that names it (bind-mounted over /etc/hosts in a private
mount namespace of the command under test, never the machine's own).

Run as ``python -m harness.pkgmirror serve DIR ADDRESS HTTP_PORT HTTPS_PORT CERT KEY LOG``: the
server itself (it prints "listening" once both ports accept; each request it answers is a line
of LOG, so a test can count the downloads that reached the mirror)."""

from __future__ import annotations

import http.server
import os
import ssl
import subprocess
import sys
import threading
from dataclasses import dataclass
from functools import partial
from pathlib import Path

ARCH = subprocess.run(
    ["dpkg", "--print-architecture"], capture_output=True, text=True, check=True
).stdout.strip()


def build_deb(
    pool: Path,
    name: str,
    version: str,
    *,
    depends: str = "",
    postinst: str = "",
    payload_kb: int = 0,
) -> Path:
    """A tiny arch-all package that installs /usr/share/vstpkg/NAME holding its version, with
    ``postinst`` as its maintainer script when given, and ``payload_kb`` KiB of random bytes
    (which no compression shrinks) in /usr/share/vstpkg/NAME.payload."""
    work = pool.parent / "build" / f"{name}_{version}"
    (work / "DEBIAN").mkdir(parents=True, exist_ok=True)
    share = work / "usr" / "share" / "vstpkg"
    share.mkdir(parents=True, exist_ok=True)
    (share / name).write_text(f"{version}\n")
    if payload_kb:
        (share / f"{name}.payload").write_bytes(os.urandom(payload_kb * 1024))
    control = [
        f"Package: {name}",
        f"Version: {version}",
        "Architecture: all",
        "Maintainer: vs-tools tests <root@localhost>",
        f"Description: vs-tools test package {name}",
        " A package built by the vs-pkg tests.",
    ]
    if depends:
        control.insert(3, f"Depends: {depends}")
    (work / "DEBIAN" / "control").write_text("\n".join(control) + "\n")
    if postinst:
        script = work / "DEBIAN" / "postinst"
        script.write_text("#!/bin/sh\n" + postinst + "\n")
        script.chmod(0o755)
    pool.mkdir(parents=True, exist_ok=True)
    target = pool / f"{name}_{version}_all.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(work), str(target)],
        check=True,
        capture_output=True,
    )
    return target


def index(repo: Path) -> None:
    """(Re)write dists/vst/main/binary-ARCH/Packages and dists/vst/Release."""
    binary = repo / "dists" / "vst" / "main" / f"binary-{ARCH}"
    binary.mkdir(parents=True, exist_ok=True)
    packages = subprocess.run(
        ["apt-ftparchive", "packages", "pool"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout
    (binary / "Packages").write_text(packages)
    release = subprocess.run(
        [
            "apt-ftparchive",
            "-o",
            "APT::FTPArchive::Release::Suite=vst",
            "-o",
            "APT::FTPArchive::Release::Codename=vst",
            "-o",
            f"APT::FTPArchive::Release::Architectures={ARCH}",
            "-o",
            "APT::FTPArchive::Release::Components=main",
            "release",
            "dists/vst",
        ],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    (repo / "dists" / "vst" / "Release").write_text(release)


def make_ca(directory: Path, name: str) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for ``name``: (ca.pem, cert.pem, key.pem)."""
    directory.mkdir(parents=True, exist_ok=True)

    def openssl(*argv: str) -> None:
        subprocess.run(["openssl", *argv], cwd=directory, check=True, capture_output=True)

    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=vst throwaway CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    )
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        f"/CN={name}",
        "-keyout",
        "key.pem",
        "-out",
        "server.csr",
    )
    (directory / "ext").write_text(f"subjectAltName=DNS:{name}\n")
    openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext",
        "-out",
        "cert.pem",
    )
    return directory / "ca.pem", directory / "cert.pem", directory / "key.pem"


@dataclass
class Mirror:
    """A running mirror: its name, address, repository and server process."""

    name: str
    address: str
    repo: Path
    ca: Path
    process: subprocess.Popen[str]
    access_log: Path
    http_port: int = 80
    https_port: int = 443

    def publish(self, name: str, version: str, *, postinst: str = "", payload_kb: int = 0) -> None:
        """Add a package version and re-index (what a newer upload looks like to the guest)."""
        build_deb(self.repo / "pool", name, version, postinst=postinst, payload_kb=payload_kb)
        index(self.repo)

    def requests(self, path: str | None = None) -> int:
        """How many requests for ``path`` (e.g. ``/pool/vsthello_1.0_all.deb``), or for
        anything, it answered."""
        if not self.access_log.exists():
            return 0
        lines = self.access_log.read_text().splitlines()
        return sum(1 for line in lines if path is None or line.split()[1:2] == [path])

    def stop(self) -> None:
        """Stop the server by the PID the test started."""
        self.process.kill()
        self.process.wait()


def start_mirror(
    netns_prefix: list[str], workdir: Path, name: str, address: str, packages: dict[str, str]
) -> Mirror:
    """Build the repository with ``packages`` (name -> version) and serve it from the namespace
    ``netns_prefix`` enters."""
    repo = workdir / "repo"
    for package, version in packages.items():
        build_deb(repo / "pool", package, version)
    index(repo)
    ca, cert, key = make_ca(workdir / "tls", name)
    root = Path(__file__).resolve().parents[1]
    access_log = workdir / "access.log"
    process = subprocess.Popen(
        [
            *netns_prefix,
            sys.executable,
            "-m",
            "harness.pkgmirror",
            "serve",
            str(repo),
            address,
            "80",
            "443",
            str(cert),
            str(key),
            str(access_log),
        ],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    if process.stdout.readline().strip() != "listening":
        process.kill()
        process.wait()
        raise RuntimeError("the test mirror did not start")
    return Mirror(name, address, repo, ca, process, access_log)


class _Logged(http.server.SimpleHTTPRequestHandler):
    """Each answered request as one line ``METHOD PATH STATUS`` of ``access_log``. HTTP/1.1 with
    persistent connections, a 404 included, as Debian's mirrors answer: apt-cacher-ng sends
    several requests on one connection before the first answer, and a server closing after each
    (http.server's HTTP/1.0, and its ``Connection: close`` on every error) lost the ones behind
    it; with ten guests at once, a retry could fail too ("503 Connection closed, check
    DlMaxRetries", seen once in `make bench`)."""

    protocol_version = "HTTP/1.1"
    access_log = ""
    lock = threading.Lock()

    def send_header(self, keyword: str, value: str) -> None:
        # send_error's "Connection: close": its answer has a Content-Length, the connection can
        # stay open.
        if keyword.lower() == "connection" and value.lower() == "close" and self.command:
            return
        super().send_header(keyword, value)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        with self.lock, open(self.access_log, "a") as log:
            log.write(f"{self.command} {self.path} {code}\n")

    def log_message(self, format: str, *args: object) -> None:
        pass


def serve(
    repo: str, address: str, ports: tuple[int, int], tls_files: tuple[str, str], access_log: str
) -> None:
    """Serve ``repo`` over HTTP and HTTPS until killed, logging each request."""
    _Logged.access_log = access_log
    handler = partial(_Logged, directory=repo)
    plain = http.server.ThreadingHTTPServer((address, ports[0]), handler)
    tls = http.server.ThreadingHTTPServer((address, ports[1]), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*tls_files)
    tls.socket = context.wrap_socket(tls.socket, server_side=True)
    threading.Thread(target=plain.serve_forever, daemon=True).start()
    print("listening", flush=True)
    tls.serve_forever()


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        _, _, repo_dir, addr, p1, p2, cert_file, key_file, log_file = sys.argv
        serve(repo_dir, addr, (int(p1), int(p2)), (cert_file, key_file), log_file)
