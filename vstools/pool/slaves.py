"""The master's slaves: slaves.conf, how each is reached (vstools.host.ssh with the key and
known_hosts of vs-tools.conf, connections reused under RUN_DIR/ssh), and a fan-out that asks
them all at once with a bound, each answer or error kept per slave: one unreachable slave is
reported and never blocks the others."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

from vstools.config.pool import Slave, SlavesConf, parse_slaves
from vstools.errors import NotFoundError, UsageError, VSError
from vstools.host.hostconfig import HostConfig, load_optional
from vstools.host.ssh import Remote, SshOptions

T = TypeVar("T")
FAN_OUT = 8  # slaves asked at once


@dataclass(frozen=True, slots=True)
class Answer(Generic[T]):
    """What one slave answered: its value, or the error that kept it from answering."""

    host: str
    value: T | None = None
    error: VSError | None = None


class Pool:
    """The master's configuration and its slaves."""

    def __init__(self, host: HostConfig) -> None:
        self.host = host
        path = host.paths.etc_file(SlavesConf.FILE_NAME)
        if not path.exists():
            raise NotFoundError(f"no {path}: this host is no master (it lists no slave)")
        self.conf: SlavesConf = load_optional(path, parse_slaves, SlavesConf(()))
        control = host.paths.run_dir / "ssh"
        control.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.options = SshOptions(
            key=host.settings.ssh_key,
            known_hosts=host.settings.ssh_known_hosts,
            control_dir=control,
            connect_timeout_s=host.settings.ssh_timeout_s,
            call_timeout_s=host.settings.ssh_call_timeout_s,
            # A slave that stops answering mid-copy is given up after about SSH_TIMEOUT too.
            alive_interval_s=max(1, host.settings.ssh_timeout_s // 3),
            alive_count=3,
        )

    @property
    def slaves(self) -> tuple[Slave, ...]:
        """The slaves of slaves.conf, in file order."""
        return self.conf.slaves

    def slave(self, name: str) -> Slave:
        """The slave named ``name``; UsageError when slaves.conf does not list it."""
        for slave in self.conf.slaves:
            if slave.host == name:
                return slave
        raise UsageError(f"{name} is not a slave of {self.conf.path or 'slaves.conf'}")

    def remote(self, name: str) -> Remote:
        """How to reach the slave ``name`` (listed in slaves.conf)."""
        return Remote(self.slave(name).host, self.options)

    def select(self, names: Sequence[str] | None) -> list[Slave]:
        """The slaves named (each checked), or all of them."""
        return list(self.conf.slaves) if not names else [self.slave(n) for n in names]

    def fan_out(
        self, ask: Callable[[Remote], T], names: Sequence[str] | None = None
    ) -> list[Answer[T]]:
        """``ask`` every slave (or those named) at once, at most FAN_OUT at a time: one answer
        per slave, in slaves.conf's order, an error in place of a value where it failed."""
        slaves = self.select(names)

        def one(slave: Slave) -> Answer[T]:
            """One slave's answer, or the error that kept it from answering."""
            try:
                return Answer(slave.host, ask(Remote(slave.host, self.options)))
            except VSError as exc:
                return Answer(slave.host, error=exc)

        if not slaves:
            return []
        with ThreadPoolExecutor(max_workers=min(FAN_OUT, len(slaves))) as workers:
            return list(workers.map(one, slaves))
