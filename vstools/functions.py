"""The functions ``vs-fonctions`` may call: an explicit registry, never "any attribute of the
library", so a shell script (or the master, over SSH) can call exactly these and nothing else."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from vstools import __version__
from vstools.backup.borg import forget_repositories
from vstools.backup.slave import (
    backup_guest,
    backup_public_key,
    borg_dir,
    read_secrets_from_stdin,
    taken_json,
)
from vstools.config.files import check_files, parse_file
from vstools.config.lexer import ValueProblem
from vstools.config.pool import BackupMode
from vstools.config.values import mb as _mb
from vstools.config.values import parse_guest_name, parse_host, parse_ipv4
from vstools.errors import ConfigError, NotFoundError, Problem, UsageError
from vstools.guest.facts import guest_facts, guests_facts, host_facts
from vstools.guest.moving import drop_moved, hold, keep_moved, release
from vstools.guest.receive import (
    check_room,
    receive_abort,
    receive_begin,
    receive_commit,
    received_clear,
    received_take,
)
from vstools.guest.templates import write_busybox_template
from vstools.host.hostconfig import (
    HostConfig,
    check_tree,
    list_guests,
    load_guest,
    load_networks,
    load_settings,
)
from vstools.host.journal import operation
from vstools.host.rsync_server import serve
from vstools.host.ssh import wait_for_go
from vstools.pool.push import (
    push_allow,
    push_copy,
    push_drop,
    push_key,
    push_receive,
    push_revoke,
)
from vstools.pool.send import push_final, push_send
from vstools.storage.base import check_tag
from vstools.storage.select import guest_storage

Env = Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Param:
    """One argument of a registered function: its name and the parser of its text."""

    name: str
    parse: Callable[[str], Any] = str
    variadic: bool = False  # takes every remaining argument (zero or more)


@dataclass(frozen=True, slots=True)
class Function:
    """A function vs-fonctions may call: its parameters and a one-line description."""

    name: str
    call: Callable[..., Any]  # called as call(env, *parsed_args)
    params: tuple[Param, ...]
    doc: str

    @property
    def signature(self) -> str:
        """The usage line: the name, then each parameter in capitals (``[FILE...]`` if variadic)."""
        words = [f"[{p.name.upper()}...]" if p.variadic else p.name.upper() for p in self.params]
        return " ".join([self.name, *words])


def _version(env: Env) -> str:
    return __version__


def _paths(env: Env) -> dict[str, str]:
    return load_settings(env)[1].as_dict()


def _settings(env: Env) -> object:
    return load_settings(env)[0]


def _check(env: Env, *files: str) -> list[Problem]:
    if files:
        return check_files(files)

    return check_tree(env)


def _parse(env: Env, path: str) -> object:
    return parse_file(path)


def _valid_name(env: Env, name: str) -> str:
    return name  # the parameter's parser already refused anything invalid


def _networks(env: Env) -> object:
    return load_networks(load_settings(env)[1]).networks


def _network_for(env: Env, ip: Any) -> object:
    networks = load_networks(load_settings(env)[1])
    found = networks.network_for(ip)
    if found is None:
        raise NotFoundError(f"{ip} is in no network of {networks.path or 'networks.conf'}")
    return found


def _guests(env: Env) -> list[str]:
    return list_guests(load_settings(env)[1])


def _guest_config(env: Env, name: str) -> object:
    return load_guest(load_settings(env)[1], name)


def _busybox_template(env: Env, archive: str) -> str:
    from pathlib import Path

    return str(write_busybox_template(Path(archive)))


def _host_facts(env: Env) -> dict[str, Any]:
    return host_facts(HostConfig.load(env))


def _guests_facts(env: Env) -> list[dict[str, Any]]:
    return guests_facts(HostConfig.load(env))


def _scan_report(env: Env) -> dict[str, Any]:
    host = HostConfig.load(env)
    return {"host": host_facts(host), "guests": guests_facts(host)}


def _snapshot_take(env: Env, name: str, tag: str) -> str:
    host = HostConfig.load(env)
    storage = guest_storage(host, host.guest_conf(name))
    stale = storage.snapshot_steps(name, tag)[1]
    storage.remove_snapshot(stale)  # one a killed transfer left: taken anew
    return str(storage.create_snapshot(name, tag).path)


def _snapshot_drop(env: Env, name: str, tag: str) -> str:
    host = HostConfig.load(env)
    storage = guest_storage(host, host.guest_conf(name))
    snapshot = storage.snapshot_steps(name, tag)[1]
    storage.remove_snapshot(snapshot)
    return str(snapshot.path)


def _receive_begin(env: Env, name: str, disk_mb: int) -> dict[str, Any]:
    return receive_begin(HostConfig.load(env), name, disk_mb)


def _receive_commit(env: Env, name: str) -> dict[str, str]:
    return receive_commit(HostConfig.load(env), name)


def _receive_start(env: Env, name: str) -> dict[str, str]:
    """receive_commit, then start the guest as vs-control --start does, in one process: the
    end of a move, while the guest is stopped, costs one program start here, not two."""
    return _commit_and_start(HostConfig.load(env), name)


def _commit_and_start(host: HostConfig, name: str) -> dict[str, str]:
    """receive_commit, then start the guest as vs-control --start does."""
    from vstools.guest.start import start_guest  # the runtime's imports, for these only

    placed = receive_commit(host, name)
    with operation(f"vs-control --start {name}"):
        start_guest(host, name, foreground=False)
    return placed


def _receive_start_armed(env: Env, name: str) -> dict[str, Any]:
    """receive_start armed before the guest stops at its source (Remote.arm): this program
    started, the runtime imported and the host's files read ahead; the commit and the start
    only on the master's word (sent once the final pass is verified), nothing otherwise."""
    import vstools.guest.start  # noqa: F401 - the runtime's imports, made now

    host = HostConfig.load(env)
    host.create()  # read now, while the guest still runs at its source
    host.networks()
    host.cgroup_layout()
    words = wait_for_go(sys.stdin, sys.stdout)
    if words is None:
        return {"cancelled": True}
    if words:
        raise UsageError(f"receive_start_armed: go {' '.join(words)}? (go alone)")
    return _commit_and_start(host, name)


def _receive_abort(env: Env, name: str) -> str:
    receive_abort(HostConfig.load(env), name)
    return name


def _move_hold(env: Env, name: str, target: str) -> str:
    hold(HostConfig.load(env), name, target)
    return name


def _move_release(env: Env, name: str) -> str:
    release(HostConfig.load(env), name)
    return name


def _move_keep(env: Env, name: str) -> dict[str, str]:
    return keep_moved(HostConfig.load(env), name)


def _move_drop(env: Env, name: str) -> dict[str, str]:
    return drop_moved(HostConfig.load(env), name)


def _push_key(env: Env, name: str, target: str) -> dict[str, str]:
    return push_key(HostConfig.load(env), name, target)


def _push_drop(env: Env, name: str) -> str:
    return push_drop(HostConfig.load(env), name)


def _push_allow(env: Env, name: str, public_key: str, source: Any) -> dict[str, str]:
    return push_allow(HostConfig.load(env), name, public_key, str(source))


def _push_receive(env: Env, name: str) -> None:
    push_receive(HostConfig.load(env), name)


def _rsync_server(env: Env, *asked: str) -> None:
    serve(HostConfig.load(env), asked)


def _push_revoke(env: Env, name: str) -> str:
    return push_revoke(HostConfig.load(env), name)


def _push_send(
    env: Env, name: str, tag: str, parent: str, options: dict[str, Any]
) -> dict[str, Any]:
    return push_send(HostConfig.load(env), name, tag, parent, options)


def _received_clear(env: Env, name: str) -> str:
    return received_clear(HostConfig.load(env), name)


def _received_take(env: Env, name: str, subvolume: str, uuid: str) -> dict[str, str]:
    return received_take(HostConfig.load(env), name, subvolume, uuid)


def _push_copy(env: Env, name: str, what: str, options: dict[str, Any]) -> dict[str, Any]:
    return push_copy(HostConfig.load(env), name, what, options)


def _push_final(env: Env, name: str, options: dict[str, Any]) -> dict[str, Any]:
    return push_final(HostConfig.load(env), name, options, stdin=sys.stdin, stdout=sys.stdout)


def _json_object(text: str) -> dict[str, Any]:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError("expected a JSON object")
    return value


def _backup_key(env: Env) -> str:
    return backup_public_key(HostConfig.load(env))


def _backup_guest(env: Env, name: str, mode: BackupMode) -> dict[str, Any]:
    secrets = read_secrets_from_stdin()  # never on the command line: any local user reads that
    return taken_json(backup_guest(HostConfig.load(env), name, mode, secrets))


def _backup_forget(env: Env) -> list[str]:
    return forget_repositories(borg_dir(HostConfig.load(env)))


def _check_room(env: Env, size_mb: int) -> dict[str, Any]:
    return check_room(HostConfig.load(env), size_mb)


def _guest_facts(env: Env, name: str) -> dict[str, Any]:
    host = HostConfig.load(env)
    host.guest_conf(name)  # NotFoundError for a guest that is not defined here
    return guest_facts(host, name)


REGISTRY: dict[str, Function] = {
    f.name: f
    for f in (
        Function("version", _version, (), "the toolkit's version"),
        Function("paths", _paths, (), "the directories in force (vs-tools.conf, VS_* variables)"),
        Function("settings", _settings, (), "vs-tools.conf as parsed, defaults included"),
        Function(
            "check",
            _check,
            (Param("file", variadic=True),),
            "problems in the whole configuration, or in the FILEs named",
        ),
        Function("parse", _parse, (Param("file"),), "one file parsed, recognised by its name"),
        Function(
            "valid_name",
            _valid_name,
            (Param("name", parse_guest_name),),
            "the name if it is a valid guest name, else an error",
        ),
        Function("networks", _networks, (), "the networks of networks.conf"),
        Function(
            "network_for",
            _network_for,
            (Param("ip", parse_ipv4),),
            "the network of networks.conf that contains IP",
        ),
        Function("guests", _guests, (), "the guests defined on this host"),
        Function(
            "busybox_template",
            _busybox_template,
            (Param("archive"),),
            "write a busybox guest template (tar.gz) built from the host's busybox-static",
        ),
        Function(
            "host_facts",
            _host_facts,
            (),
            "this host for the pool: free memory and disk, storage, networks (the master's scan)",
        ),
        Function(
            "guests_facts",
            _guests_facts,
            (),
            "every guest of this host: state, address, network, context, storage, size",
        ),
        Function(
            "scan_report",
            _scan_report,
            (),
            "host_facts and guests_facts in one answer (what the master's vs-scan asks)",
        ),
        Function(
            "guest_facts",
            _guest_facts,
            (Param("name", parse_guest_name),),
            "one guest: state, address, network, context, storage, size",
        ),
        Function(
            "snapshot_take",
            _snapshot_take,
            (Param("name", parse_guest_name), Param("tag", check_tag)),
            "take a read-only snapshot TAG of a guest's root (btrfs, lvm): its path",
        ),
        Function(
            "snapshot_drop",
            _snapshot_drop,
            (Param("name", parse_guest_name), Param("tag", check_tag)),
            "remove the snapshot TAG of a guest's root (nothing if there is none)",
        ),
        Function(
            "receive_begin",
            _receive_begin,
            (Param("name", parse_guest_name), Param("disk_mb", _mb)),
            "make the places a guest arriving here is received in: their paths",
        ),
        Function(
            "receive_commit",
            _receive_commit,
            (Param("name", parse_guest_name),),
            "put a received guest in place (after the sender verified it)",
        ),
        Function(
            "receive_start",
            _receive_start,
            (Param("name", parse_guest_name),),
            "receive_commit, then start the guest (the end of a move, in one call)",
        ),
        Function(
            "receive_start_armed",
            _receive_start_armed,
            (Param("name", parse_guest_name),),
            "receive_start prepared ahead: says 'armed', then acts on a line 'go' on stdin only",
        ),
        Function(
            "receive_abort",
            _receive_abort,
            (Param("name", parse_guest_name),),
            "remove what was received of a guest and not committed",
        ),
        Function(
            "received_clear",
            _received_clear,
            (Param("name", parse_guest_name),),
            "remove the btrfs snapshots received of a guest (a send starting anew)",
        ),
        Function(
            "received_take",
            _received_take,
            (Param("name", parse_guest_name), Param("subvolume"), Param("uuid")),
            "the snapshot received whole (its Received UUID is UUID) becomes the guest's root",
        ),
        Function(
            "move_hold",
            _move_hold,
            (Param("name", parse_guest_name), Param("target", parse_host)),
            "mark a guest as being moved to TARGET: it refuses to start here until released",
        ),
        Function(
            "move_release",
            _move_release,
            (Param("name", parse_guest_name),),
            "a move was rolled back: the guest may start here again",
        ),
        Function(
            "move_keep",
            _move_keep,
            (Param("name", parse_guest_name),),
            "put a moved (held, stopped) guest aside as NAME.moved",
        ),
        Function(
            "move_drop",
            _move_drop,
            (Param("name", parse_guest_name),),
            "remove what move_keep put aside",
        ),
        Function(
            "push_key",
            _push_key,
            (Param("name", parse_guest_name), Param("target", parse_host)),
            "source of a move: a one-time key pair to copy NAME to TARGET, and this host's address",
        ),
        Function(
            "push_drop",
            _push_drop,
            (Param("name", parse_guest_name),),
            "source of a move: remove its one-time key pair",
        ),
        Function(
            "push_allow",
            _push_allow,
            (Param("name", parse_guest_name), Param("public_key"), Param("source", parse_ipv4)),
            "destination of a move: let the key in from SOURCE, write-only, into NAME's place",
        ),
        Function(
            "push_receive",
            _push_receive,
            (Param("name", parse_guest_name),),
            "destination of a move, as the one-time key's forced command: become the rsync"
            " that writes into NAME's place (SSH_ORIGINAL_COMMAND checked first)",
        ),
        Function(
            "rsync_server",
            _rsync_server,
            (Param("rsync_argument", variadic=True),),
            "the master's copies (--rsync-path): become rsync's server side, jailed with the"
            " one directory it copies as its only view of this host",
        ),
        Function(
            "push_revoke",
            _push_revoke,
            (Param("name", parse_guest_name),),
            "destination of a move: remove the one-time key of NAME",
        ),
        Function(
            "push_send",
            _push_send,
            (
                Param("name", parse_guest_name),
                Param("tag", check_tag),
                Param("parent"),
                Param("options", _json_object),
            ),
            "source of a move between btrfs hosts: btrfs send snapshot TAG (from PARENT)",
        ),
        Function(
            "push_copy",
            _push_copy,
            (Param("name", parse_guest_name), Param("what"), Param("options", _json_object)),
            "source of a move: rsync NAME's root (or snapshot:TAG) straight to the destination",
        ),
        Function(
            "push_final",
            _push_final,
            (Param("name", parse_guest_name), Param("options", _json_object)),
            "source of a move: connect to the destination, say 'armed', then make the final"
            " pass on 'go copy WHAT' or 'go send TAG [PARENT]' on stdin (nothing otherwise)",
        ),
        Function(
            "backup_key",
            _backup_key,
            (),
            "this slave's public key for the master's backup repository (made on first use)",
        ),
        Function(
            "backup_guest",
            _backup_guest,
            (Param("name", parse_guest_name), Param("mode", BackupMode)),
            "archive a guest (hot or cold) into the master's repository (secrets on stdin)",
        ),
        Function(
            "backup_forget",
            _backup_forget,
            (),
            "forget borg's cache and security records of the master's repository (rollback)",
        ),
        Function(
            "check_room",
            _check_room,
            (Param("size_mb", _mb),),
            "free space, extended attributes and ACLs where guests' roots live",
        ),
        Function(
            "guest_config",
            _guest_config,
            (Param("name", parse_guest_name),),
            "a guest's guest.conf, firewall.conf and monitor.conf, parsed",
        ),
    )
}


def call_function(name: str, args: list[str], env: Env) -> Any:
    """Look ``name`` up in the registry, parse ``args`` by its parameters and call it."""

    function = REGISTRY.get(name)
    if function is None:
        raise UsageError(f"unknown function {name!r}; vs-fonctions --list names them")
    fixed = [p for p in function.params if not p.variadic]
    variadic = any(p.variadic for p in function.params)
    if len(args) < len(fixed) or (len(args) > len(fixed) and not variadic):
        raise UsageError(f"usage: vs-fonctions {function.signature}")
    parsed: list[Any] = []
    for index, text in enumerate(args):
        param = function.params[min(index, len(function.params) - 1)]
        try:
            parsed.append(param.parse(text))
        except (ValueProblem, ValueError) as exc:
            raise UsageError(f"{name}: {param.name.upper()}: {exc}") from None
    result = function.call(env, *parsed)
    if name == "check" and any(p.severity.value == "error" for p in result):
        raise ConfigError(result)
    return result
