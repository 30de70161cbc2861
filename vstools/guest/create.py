"""vs-create's work: check the request against the host (read-only), then build the guest as a
list of steps, each undone if a later one fails, so a failed creation leaves nothing behind."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field, replace
from functools import partial
from ipaddress import IPv4Address
from pathlib import Path
from typing import TYPE_CHECKING

from vstools.config.create import ContextMethod, CreateConf, CreateMethod
from vstools.config.guest import MAX_CONTEXT, GuestConf, userns_base
from vstools.config.networks import Network
from vstools.config.values import CpuRatio, StorageKind
from vstools.errors import NotFoundError, StateError, UsageError
from vstools.guest.lifecycle import HEADER
from vstools.guest.remove import plan_remove
from vstools.host.fsutil import atomic_write
from vstools.host.hostconfig import HostConfig
from vstools.host.rootfs import GuestRoot
from vstools.host.run import run
from vstools.names import guest_name_problem
from vstools.net.probe import check_address_free
from vstools.paths import INCOMPLETE_MARKER as INCOMPLETE
from vstools.paths import REMOVING_MARKER, Paths
from vstools.plan import Step, apply_steps
from vstools.runtime.state import read_state
from vstools.storage.select import guest_storage, storage_for

if TYPE_CHECKING:
    from vstools.storage.base import Storage

TEMPLATE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.zst", ".tzst", ".tar.xz", ".txz")


@dataclass(frozen=True, slots=True)
class CreateRequest:
    """What the administrator asked for; None means "the default"."""

    name: str
    ip: IPv4Address
    template: str | None = None
    debootstrap: str | None = None
    clone: str | None = None
    disk_mb: int | None = None
    rss_mb: int | None = None
    tmpfs_mb: int | None = None
    proc: int | None = None
    cpu: CpuRatio | None = None
    domain: str | None = None
    nameservers: tuple[IPv4Address, ...] = ()
    context: int | None = None
    enable: bool = False


@dataclass(frozen=True, slots=True)
class CheckedRequest:
    """A request that passed the read-only checks: the guest.conf to write, how to fill the
    rootfs and from what, and what was checked of the host (for --dry-run and the log)."""

    conf: GuestConf
    method: CreateMethod
    source: str
    network: Network | None
    checks: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class CreatePlan:
    """A checked creation: the guest.conf, the source, the network, the steps that build the
    guest and what was checked."""

    conf: GuestConf
    method: CreateMethod
    source: str
    network: Network | None
    rootfs: Path
    steps: list[Step] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, object]:
        """The new guest's parameters, as vs-create prints them."""
        net = self.network
        return {
            "vserver": self.conf.name,
            "ip": str(self.conf.ip),
            "context": self.conf.context,
            "vlan": net.vlan if net else "",
            "network": str(net.network) if net else "",
            "gateway": str(net.gateway) if net else "",
            "domain": self.conf.domain or "",
            "nameserver": " ".join(str(ns) for ns in self.conf.nameservers),
            "rss": self.conf.rss_limit_mb,
            "disk": self.conf.disk_limit_mb,
            "tmpfs": self.conf.tmpfs_limit_mb,
            "proc": self.conf.proc_limit,
            "cpu": str(self.conf.cpu_limit),
            "method": self.method.value,
            "source": self.source,
            "rootfs": str(self.rootfs),
            "enabled": "yes" if self.conf.enabled else "no",
        }


def compute_context(method: ContextMethod, ip: IPv4Address, vlan: int, counter: int) -> int:
    """The context number by CONTEXT_METHOD: dec = 1000 * vlan + last octet, hex = the last two
    octets as one 16-bit number, cnt = the host's counter."""
    if method is ContextMethod.DEC:
        value = 1000 * vlan + ip.packed[3]
    elif method is ContextMethod.HEX:
        value = (ip.packed[2] << 8) | ip.packed[3]
    else:
        value = counter
    if not 1 <= value <= MAX_CONTEXT:
        raise UsageError(
            f"context number {value} from CONTEXT_METHOD={method} is out of range;"
            " give one with --context"
        )
    return value


def check_request(
    host: HostConfig, request: CreateRequest, *, probe_network: bool
) -> CheckedRequest:
    """Read-only checks and defaults (create.conf, networks.conf): the guest.conf to write, how
    to fill the rootfs, from what. The address must be no other guest's, configured on no
    interface of this host and, when ``probe_network`` (NETWORK=routed), unanswered on its
    uplink. Raises before anything is changed."""
    paths, defaults, networks = host.paths, host.create(), host.networks()
    name = request.name
    if (paths.guest_dir(name)).exists() or paths.guest_root(name).exists():
        raise StateError(f"guest {name} already exists on this host")
    used: dict[int, str] = {}
    for other in host.guest_names():
        conf = host.guest(other).conf
        if conf.ip == request.ip:
            raise StateError(f"{request.ip} is already the address of guest {other}")
        used[conf.context] = other
    network = networks.network_for(request.ip)
    if network is None and networks.networks:
        raise UsageError(f"{request.ip} is in no network of {networks.path}")
    if network is not None and request.ip in (
        network.gateway,
        network.network.network_address,
        network.network.broadcast_address,
    ):
        raise UsageError(
            f"{request.ip} is the gateway, network or broadcast address of {network.network}"
        )
    method, source = _source(defaults, request)
    context = request.context or compute_context(
        defaults.context_method,
        request.ip,
        network.vlan if network else defaults.vlan,
        _peek_counter(paths, defaults),
    )
    if context in used:
        raise StateError(f"context {context} is already used by guest {used[context]}")
    _check_source_and_storage(host, request, method=method, source=source, context=context)
    # Last: the ARP probe is the one check that takes time (about a second for a free address).

    checks = [f"{request.ip} is the address of no other guest of this host"]
    checks += check_address_free(request.ip, network, defaults, probe_network=probe_network)
    conf = GuestConf(
        name=name,
        context=context,
        ip=request.ip,
        hostname=name,
        domain=request.domain or (network.domain if network else None) or defaults.domain,
        nameservers=request.nameservers
        or (network.nameservers if network else ())
        or defaults.nameservers,
        rss_limit_mb=request.rss_mb or defaults.rss_limit_mb,
        disk_limit_mb=request.disk_mb or defaults.disk_limit_mb,
        tmpfs_limit_mb=request.tmpfs_mb or defaults.tmpfs_limit_mb,
        proc_limit=request.proc or defaults.proc_limit,
        cpu_limit=request.cpu or defaults.cpu_limit,
        enabled=request.enable,
        storage=defaults.storage,
        init=defaults.init,
        userns=defaults.userns,
    )
    return CheckedRequest(conf, method, source, network, checks)


def _source(defaults: CreateConf, request: CreateRequest) -> tuple[CreateMethod, str]:
    if request.template:
        return CreateMethod.TEMPLATE, request.template
    if request.debootstrap:
        return CreateMethod.DEBOOTSTRAP, request.debootstrap
    if request.clone:
        return CreateMethod.CLONE, request.clone
    if defaults.method is CreateMethod.DEBOOTSTRAP:
        return CreateMethod.DEBOOTSTRAP, defaults.distro
    if defaults.template is None:
        raise UsageError(
            "no --template, --debootstrap or --clone, and create.conf has no DEFAULT_TEMPLATE"
        )
    return CreateMethod.TEMPLATE, defaults.template


def _counter_file(paths: Paths) -> Path:
    return paths.state_dir / "context.next"


def _peek_counter(paths: Paths, defaults: CreateConf) -> int:
    try:
        return max(int(_counter_file(paths).read_text().strip()), 1)
    except (FileNotFoundError, ValueError):
        return defaults.context_start


def plan_create(host: HostConfig, request: CreateRequest, *, probe_network: bool) -> CreatePlan:
    """The checked request and the steps that build the guest (``probe_network``: see
    check_request)."""
    paths, defaults = host.paths, host.create()
    checked = check_request(host, request, probe_network=probe_network)
    conf, method, source, network = checked.conf, checked.method, checked.source, checked.network
    rootfs = paths.guest_root(conf.name)
    directory = paths.guest_dir(conf.name)
    storage = _storage(paths, defaults)
    conf = replace(
        conf,
        lvm_vg=defaults.lvm_vg if storage.kind is StorageKind.LVM else None,
        lvm_fs=defaults.lvm_fs,
    )
    plan = CreatePlan(conf, method, source, network, rootfs, checks=checked.checks)
    if method is CreateMethod.CLONE:
        origin = guest_storage(host, host.guest(source).conf)
        root_steps = storage.clone_steps(conf.name, conf.disk_limit_mb, origin, source)
    else:
        root_steps = [
            *storage.make_steps(conf.name, conf.disk_limit_mb),
            _fill_step(defaults, method, source, rootfs),
        ]
    plan.steps.extend(
        [
            Step(
                f"create {directory}, marked incomplete until the end",
                lambda: _start_marked(directory, storage, conf),
                lambda: shutil.rmtree(directory),
            ),
            *root_steps,
            Step(
                f"write /etc/hostname, /etc/hosts and /etc/resolv.conf in {rootfs}",
                lambda: _write_guest_files(rootfs, conf),
            ),
            Step(
                f"write {directory}/firewall.conf and monitor.conf from the templates",
                lambda: _copy_templates(paths, directory),
            ),
            *storage.close_steps(conf.name),
            Step(f"write {directory / GuestConf.FILE_NAME}", lambda: _write_conf(directory, conf)),
            Step(
                f"mark {conf.name} complete",
                (directory / INCOMPLETE).unlink,
                lambda: _start_marked(directory, storage, conf),
            ),
        ]
    )
    if defaults.context_method is ContextMethod.CNT and request.context is None:
        old = _peek_counter(paths, defaults)
        plan.steps.append(
            Step(
                f"advance the context counter to {conf.context + 1}",
                lambda: _write_counter(paths, conf.context + 1),
                lambda: _write_counter(paths, old),
            )
        )
    return plan


def _check_source_and_storage(
    host: HostConfig, request: CreateRequest, *, method: CreateMethod, source: str, context: int
) -> None:
    """What the rootfs is made from and where, and the user namespace's room: all read-only."""
    defaults = host.create()
    if defaults.userns:
        try:
            userns_base(context)
        except ValueError as exc:
            raise UsageError(f"DEFAULT_USERNS=yes in create.conf: {exc}") from None
    if method is CreateMethod.TEMPLATE and not Path(source).is_file():
        raise NotFoundError(f"template {source} does not exist")
    if method is CreateMethod.CLONE:
        _check_clone_source(host, source)
    size_mb = request.disk_mb or defaults.disk_limit_mb
    _storage(host.paths, defaults).check_create(request.name, size_mb)


def _check_clone_source(host: HostConfig, source: str) -> None:
    if not guest_storage(host, host.guest(source).conf).is_present(source):
        raise NotFoundError(f"guest {source} has no root filesystem to clone")
    if read_state(host.paths.guest_run_dir(source)) is not None:
        raise StateError(f"guest {source} is running: stop it to clone it consistently")


def _storage(paths: Paths, defaults: CreateConf) -> Storage:
    return storage_for(
        paths,
        defaults.storage,
        lvm_vg=defaults.lvm_vg,
        lvm_fs=defaults.lvm_fs,
        snapshot_size_mb=defaults.snapshot_size_mb,
    )


def _fill_step(defaults: CreateConf, method: CreateMethod, source: str, rootfs: Path) -> Step:
    if method is CreateMethod.TEMPLATE:
        # GNU tar detects the compression (gzip, zstd, xz) itself; --numeric-owner keeps the
        # template's uids instead of mapping them through the host's /etc/passwd.
        argv = [
            "tar",
            "--numeric-owner",
            "--xattrs",
            "--xattrs-include=*",
            "-xpf",
            source,
            "-C",
            str(rootfs),
        ]
        return Step(f"unpack {source}", partial(_run, argv))
    argv = ["debootstrap", "--variant=minbase", source, str(rootfs), defaults.main_mirror]
    return Step(
        f"debootstrap {source} from {defaults.main_mirror}", partial(_run, argv, timeout_s=3600.0)
    )


def _run(argv: list[str], timeout_s: float | None = None) -> None:
    run(argv, timeout_s=timeout_s)


def _write_guest_files(rootfs: Path, conf: GuestConf) -> None:
    """Files the host writes inside the guest, through the rootfs door: a guest symlink never
    makes these writes land outside the rootfs (H1, H2)."""

    fqdn = f"{conf.hostname}.{conf.domain}" if conf.domain else conf.hostname
    with GuestRoot(rootfs) as root:
        root.makedirs("etc")
        root.write_text("etc/hostname", f"{conf.hostname}\n")
        root.write_text("etc/hosts", f"127.0.0.1\tlocalhost\n{conf.ip}\t{fqdn} {conf.hostname}\n")
        lines = [f"search {conf.domain}"] if conf.domain else []
        lines += [f"nameserver {ns}" for ns in conf.nameservers]
        root.write_text("etc/resolv.conf", "".join(line + "\n" for line in lines))


def _copy_templates(paths: Paths, directory: Path) -> None:
    for name in ("firewall.conf", "monitor.conf"):
        template = paths.etc_file(name)
        if template.is_file():
            atomic_write(directory / name, template.read_bytes())


def _write_conf(directory: Path, conf: GuestConf) -> None:
    atomic_write(directory / GuestConf.FILE_NAME, conf.render(header=HEADER))


def _start_marked(directory: Path, storage: Storage, conf: GuestConf) -> None:
    """The guest's configuration directory, holding the marker that says how to remove what
    this creation makes if it is killed halfway (its storage, known before any guest.conf)."""

    directory.mkdir(parents=True, exist_ok=True)
    marker = {"storage": storage.kind.value, "lvm_vg": conf.lvm_vg, "lvm_fs": conf.lvm_fs}
    atomic_write(directory / INCOMPLETE, json.dumps(marker) + "\n")


def clean_interrupted(host: HostConfig) -> list[str]:
    """Remove what killed vs-create runs left (every guest directory still marked incomplete,
    with its root) and finish removals a killed vs-remove began. Called under the host's
    create lock, so none of them is being made now."""
    paths = host.paths
    removed = []
    try:
        entries = sorted(os.listdir(paths.guests_conf_dir))
    except FileNotFoundError:
        return []
    for name in entries:
        if guest_name_problem(name) is not None:
            continue
        if (paths.guests_conf_dir / name / REMOVING_MARKER).is_file():
            apply_steps(plan_remove(host, name).steps)
            removed.append(name)
            continue
        marker = paths.guests_conf_dir / name / INCOMPLETE
        if not marker.is_file():
            continue
        try:
            data = json.loads(marker.read_text())
            kind = StorageKind(data.get("storage", "dir"))
        except (ValueError, AttributeError):
            kind, data = StorageKind.DIR, {}
        storage = storage_for(
            paths, kind, lvm_vg=data.get("lvm_vg"), lvm_fs=data.get("lvm_fs") or "ext4"
        )
        storage.remove_root(name)
        shutil.rmtree(paths.guest_dir(name))
        removed.append(name)
    return removed


def _write_counter(paths: Paths, value: int) -> None:
    paths.state_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(_counter_file(paths), f"{value}\n")
