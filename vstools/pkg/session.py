"""The temporary, narrow opening of one vs-pkg run, opened and closed as a plan of steps:

1. a record of what is being opened (run_dir/pkg/NAME/session.json), first, so that whatever a
   killed run leaves is known to the next one;
2. PKG_PROXY_ADDRESS/32 on the host's loopback (link-local: never routed off the host), shared
   by concurrent runs and removed by the last one. Not on the guest's veth: removing the last
   IPv4 address of an interface makes the kernel flush every route through it (fib_disable_ip),
   the guest's own /32 route included;
3. a tinyproxy bound to that address alone, admitting the guest and its mirrors' names only
   (with PKG_CACHE=apt-cacher-ng and an apt guest, an apt-cacher-ng with the same fences and
   the cache all runs share: vstools.pkg.cache);
4. one element ``veth . guest address . proxy address . proxy port`` in the firewall's
   ``pkg_proxy`` set, with a timeout of PKG_TIMEOUT plus a minute.

Closing undoes them newest first. After a ``kill -9`` the element expires by itself, the proxy
has died with vs-pkg (PR_SET_PDEATHSIG) and the next vs-pkg for the guest (or ``vs-net --all
--fw up``, which refills every set) removes the rest (``clean_leftovers``)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

from vstools.config.settings import FirewallBackend
from vstools.errors import RollbackError, StateError, UsageError, VSError
from vstools.firewall.backends import Nftables
from vstools.firewall.render import PKG_PROXY_SET, pkg_proxy_element
from vstools.host.fsutil import locked, try_lock
from vstools.host.hostconfig import HostConfig
from vstools.host.netlink import Netns
from vstools.net.plan import NetPlan
from vstools.pkg.cache import check_mirror_names, start_cache_proxy
from vstools.pkg.detect import Mirror
from vstools.pkg.proxy import (
    Proxy,
    check_mirror_addresses,
    proxy_alive,
    start_proxy,
    start_time,
)
from vstools.plan import Step, apply_steps

log = logging.getLogger("vstools.pkg")

ELEMENT_MARGIN_S = 60  # the element outlives the longest run by this much (at most)


@dataclass
class Opening:
    """What one run opened: where, the proxy, and its firewall element."""

    name: str
    veth: str
    guest_ip: IPv4Address
    address: IPv4Address
    workdir: Path
    proxy: Proxy | None = None

    @property
    def element(self) -> str:
        """The key of the run's element in ``pkg_proxy``."""
        port = self.proxy.port if self.proxy is not None else 0
        return pkg_proxy_element(self.veth, str(self.guest_ip), str(self.address), port)


def workdir_of(host: HostConfig, name: str) -> Path:
    """Where a run keeps its record and the proxy's files."""
    return host.paths.run_dir / "pkg" / name


def _firewall_lock(host: HostConfig) -> contextlib.AbstractContextManager[None]:
    # The lock vstools.firewall.host takes for every load: an element never races a refresh.
    return locked(host.paths.run_dir / "firewall.lock", what="firewall (vs-pkg)", timeout_s=120.0)


def _nftables(host: HostConfig) -> Nftables:
    if host.settings.firewall_backend is not FirewallBackend.NFTABLES:
        raise UsageError(
            f"vs-pkg needs FIREWALL_BACKEND=nftables (it opens one element with a timeout, which"
            f" {host.settings.firewall_backend} cannot express); the guest's firewall is unchanged"
        )
    return Nftables()


def _record(opening: Opening) -> None:
    data = {
        "veth": opening.veth,
        "guest_ip": str(opening.guest_ip),
        "address": str(opening.address),
        "port": opening.proxy.port if opening.proxy else 0,
        "proxy_pid": opening.proxy.process.pid if opening.proxy else 0,
        "proxy_started": start_time(opening.proxy.process.pid) if opening.proxy else 0,
    }
    path = opening.workdir / "session.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data) + "\n")
    os.replace(tmp, path)


PROXY_LINK = "lo"


def _others_alive(host: HostConfig, name: str) -> list[str]:
    """Guests whose vs-pkg run is still going (its record's proxy alive), other than ``name``."""
    alive = []
    for record in sorted((host.paths.run_dir / "pkg").glob("*/session.json")):
        if record.parent.name == name:
            continue
        try:
            data = json.loads(record.read_text())
        except (OSError, ValueError):
            continue
        if proxy_alive(int(data.get("proxy_pid", 0)), int(data.get("proxy_started", 0))):
            alive.append(record.parent.name)
    return alive


def _address_lock(host: HostConfig) -> contextlib.AbstractContextManager[None]:
    return locked(host.paths.run_dir / "pkg.lock", what="vs-pkg proxy address", timeout_s=60.0)


def _add_address(host: HostConfig, address: IPv4Address) -> None:
    with _address_lock(host), Netns() as netns:
        present = any(str(a.ip) == str(address) for _, a in netns.addresses(PROXY_LINK))
        if not present:
            netns.add_address(PROXY_LINK, address, 32)


def _delete_address(host: HostConfig, name: str, address: IPv4Address) -> bool:
    """Remove the shared address unless another run still uses it; whether it was removed."""
    with _address_lock(host), Netns() as netns:
        if _others_alive(host, name):
            return False
        return netns.delete_address(PROXY_LINK, address, 32)


def _release_address(host: HostConfig, name: str, address: IPv4Address) -> None:
    if not _delete_address(host, name, address):
        log.info("%s: %s kept on %s for another run", name, address, PROXY_LINK)


@contextlib.contextmanager
def opened(
    host: HostConfig,
    plan: NetPlan,
    mirrors: Sequence[Mirror],
    *,
    cache: bool = False,
    dry_run: bool = False,
) -> Iterator[Opening]:
    """Open the run's access for ``plan``'s guest, yield it, close it whatever happens (the
    block's own error is re-raised; a close that fails raises RollbackError). ``cache``: the
    proxy is apt-cacher-ng with the shared cache rather than tinyproxy."""
    if not mirrors:
        raise UsageError(f"guest {plan.name}: its configuration names no http(s) mirror")
    nft = _nftables(host)
    with Netns() as netns:
        host_addresses = [a.ip for _, a in netns.addresses()]
    refused = check_mirror_addresses(mirrors, host_addresses)
    if cache:
        refused += check_mirror_names(mirrors)
    if refused:
        raise UsageError(
            f"guest {plan.name}: mirrors refused, nothing opened: " + "; ".join(refused)
        )
    opening = Opening(
        plan.name,
        plan.veth,
        plan.ip,
        host.settings.pkg_proxy_address,
        workdir_of(host, plan.name),
    )
    # Long enough for the run and its cleanup, and no longer: a short PKG_TIMEOUT gets a short
    # margin too (twice the timeout at most).
    run_s = host.settings.pkg_timeout_s
    timeout_s = run_s + min(ELEMENT_MARGIN_S, run_s)

    def start() -> None:
        """Start the proxy and record its PID."""
        if cache:
            opening.proxy = start_cache_proxy(
                opening.workdir,
                opening.address,
                opening.guest_ip,
                mirrors,
                host.paths.pkg_cache_dir,
                lock_timeout_s=run_s,
            )
        else:
            opening.proxy = start_proxy(opening.workdir, opening.address, opening.guest_ip, mirrors)
        _record(opening)

    def stop() -> None:
        """Stop the proxy, if it started."""
        if opening.proxy is not None:
            opening.proxy.stop()

    def add_element() -> None:
        """The one temporary element, under the firewall lock."""
        with _firewall_lock(host):
            nft.add_element(PKG_PROXY_SET, opening.element, timeout_s=timeout_s)

    def delete_element() -> None:
        """Remove it again, under the firewall lock."""
        with _firewall_lock(host):
            nft.delete_element(PKG_PROXY_SET, opening.element)

    def write_record() -> None:
        """The record a later run cleans up from."""
        opening.workdir.mkdir(mode=0o755, parents=True, exist_ok=True)
        _record(opening)

    proxy_kind = f"apt-cacher-ng (cache {host.paths.pkg_cache_dir})" if cache else "tinyproxy"
    steps = [
        Step(f"record the opening in {opening.workdir}", write_record,
             lambda: shutil.rmtree(opening.workdir, ignore_errors=True)),
        Step(f"address {opening.address}/32 on {PROXY_LINK}",
             lambda: _add_address(host, opening.address),
             lambda: _release_address(host, opening.name, opening.address)),
        Step(f"{proxy_kind} on {opening.address} for {opening.guest_ip}, mirrors "
             + ", ".join(sorted({m.host for m in mirrors})), start, stop),
        Step(f"firewall element {PKG_PROXY_SET} {{ {opening.veth} . {opening.guest_ip} ->"
             f" {opening.address} }} timeout {timeout_s}s", add_element, delete_element),
    ]  # fmt: skip
    if dry_run:
        apply_steps(steps, dry_run=True)
        yield opening
        return
    # One run per guest at a time: a second one would take the first's record for a leftover.
    with locked(_run_lock(host, plan.name), what=f"vs-pkg {plan.name}"):
        for line in clean_leftovers(host, plan.name):
            log.warning("%s: leftover of an earlier run removed: %s", plan.name, line)
        apply_steps(steps)
        url = opening.proxy.url if opening.proxy else ""
        log.info("%s: mirrors open through %s", plan.name, url)
        try:
            yield opening
        finally:
            _close(opening, steps)


def _close(opening: Opening, steps: Sequence[Step]) -> None:
    """Undo every step, newest first, each attempted even when one fails."""
    failures = []
    for step in reversed(steps):
        if step.undo is None:
            continue
        try:
            step.undo()
        except (OSError, VSError) as exc:
            failures.append(f"{step.description}: {exc}")
    if failures:
        raise RollbackError(
            f"guest {opening.name}: closing the package mirrors' access is incomplete: "
            + "; ".join(failures)
        )
    log.info("%s: mirrors closed, firewall as before", opening.name)


def _run_lock(host: HostConfig, name: str) -> Path:
    """The lock a vs-pkg run of guest ``name`` holds while it runs."""
    return host.paths.run_dir / "pkg" / f"{name}.lock"


def clean_dead_run(host: HostConfig, name: str) -> list[str]:
    """What ``vs-net --fw up`` does for guest ``name``: remove what a killed vs-pkg run left
    (clean_leftovers), unless a run holds the guest now; returns what was removed."""
    if not (workdir_of(host, name) / "session.json").exists():
        return []
    with try_lock(_run_lock(host, name)) as free:
        return clean_leftovers(host, name) if free else []


def clean_leftovers(host: HostConfig, name: str) -> list[str]:
    """Remove what a killed run left for guest ``name`` (read from its record): its element,
    its proxy if still alive, its address; returns what was removed."""
    workdir = workdir_of(host, name)
    try:
        data = json.loads((workdir / "session.json").read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise StateError(f"guest {name}: unreadable vs-pkg record {workdir}: {exc}") from None
    done = []
    veth, address = str(data["veth"]), IPv4Address(data["address"])
    port, pid = int(data.get("port", 0)), int(data.get("proxy_pid", 0))
    if port and host.settings.firewall_backend is FirewallBackend.NFTABLES:
        element = pkg_proxy_element(veth, str(data["guest_ip"]), str(address), port)
        nft = Nftables()
        with _firewall_lock(host):
            if element in nft.elements(PKG_PROXY_SET):
                nft.delete_element(PKG_PROXY_SET, element)
                done.append(f"firewall element {element}")
    if pid and proxy_alive(pid, int(data.get("proxy_started", 0))):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 15)
        done.append(f"proxy pid {pid}")
    shutil.rmtree(workdir, ignore_errors=True)
    with contextlib.suppress(VSError):
        if _delete_address(host, name, address):
            done.append(f"address {address} on {PROXY_LINK}")
    return done
