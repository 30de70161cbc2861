"""The functions ``vs-fonctions`` may call: an explicit registry, never "any attribute of the
library", so a shell script (or the master, over SSH) can call exactly these and nothing else."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from vstools import __version__
from vstools.config.values import parse_guest_name, parse_ipv4
from vstools.errors import ConfigError, NotFoundError, Problem

Env = Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    parse: Callable[[str], Any] = str
    variadic: bool = False  # takes every remaining argument (zero or more)


@dataclass(frozen=True, slots=True)
class Function:
    name: str
    call: Callable[..., Any]  # called as call(env, *parsed_args)
    params: tuple[Param, ...]
    doc: str

    @property
    def signature(self) -> str:
        words = [f"[{p.name.upper()}...]" if p.variadic else p.name.upper() for p in self.params]
        return " ".join([self.name, *words])


def _version(env: Env) -> str:
    return __version__


def _paths(env: Env) -> dict[str, str]:
    from vstools.hostconfig import load_settings

    return load_settings(env)[1].as_dict()


def _settings(env: Env) -> object:
    from vstools.hostconfig import load_settings

    return load_settings(env)[0]


def _check(env: Env, *files: str) -> list[Problem]:
    if files:
        from vstools.cli.vs_check import check_files

        return check_files(files)
    from vstools.hostconfig import check_tree

    return check_tree(env)


def _parse(env: Env, path: str) -> object:
    from vstools.config.files import parse_file

    return parse_file(path)


def _valid_name(env: Env, name: str) -> str:
    return name  # the parameter's parser already refused anything invalid


def _networks(env: Env) -> object:
    from vstools.hostconfig import load_networks, load_settings

    return load_networks(load_settings(env)[1]).networks


def _network_for(env: Env, ip: Any) -> object:
    from vstools.hostconfig import load_networks, load_settings

    networks = load_networks(load_settings(env)[1])
    found = networks.network_for(ip)
    if found is None:
        raise NotFoundError(f"{ip} is in no network of {networks.path or 'networks.conf'}")
    return found


def _guests(env: Env) -> list[str]:
    from vstools.hostconfig import list_guests, load_settings

    return list_guests(load_settings(env)[1])


def _guest_config(env: Env, name: str) -> object:
    from vstools.hostconfig import load_guest, load_settings

    return load_guest(load_settings(env)[1], name)


def _busybox_template(env: Env, archive: str) -> str:
    from pathlib import Path

    from vstools.templates import write_busybox_template

    return str(write_busybox_template(Path(archive)))


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
            "guest_config",
            _guest_config,
            (Param("name", parse_guest_name),),
            "a guest's guest.conf, firewall.conf and monitor.conf, parsed",
        ),
    )
}


def call_function(name: str, args: list[str], env: Env) -> Any:
    """Look ``name`` up in the registry, parse ``args`` by its parameters and call it."""
    from vstools.config.lexer import ValueProblem
    from vstools.errors import UsageError

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
