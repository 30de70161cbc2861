"""Retention as Proxmox's prune-backups: keep-last/daily/weekly/monthly/yearly per guest, read
from vs-tools.conf (BACKUP_KEEP is keep-last unless BACKUP_KEEP_LAST is set), turned into borg
prune's options, and borg prune's --list answer read back."""

from __future__ import annotations

import re
from dataclasses import dataclass

from vstools.config.settings import Settings
from vstools.errors import UsageError


@dataclass(frozen=True, slots=True)
class KeepPolicy:
    """How many archives each rule keeps (0: the rule is off)."""

    last: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0

    @classmethod
    def of_settings(cls, settings: Settings) -> KeepPolicy:
        """The policy of vs-tools.conf."""
        last = settings.backup_keep_last
        return cls(
            last=settings.backup_keep if last is None else last,
            daily=settings.backup_keep_daily,
            weekly=settings.backup_keep_weekly,
            monthly=settings.backup_keep_monthly,
            yearly=settings.backup_keep_yearly,
        )

    def prune_args(self) -> list[str]:
        """borg prune's --keep-* options; UsageError when every rule is off (borg would then
        remove every archive, which is never what an administrator means)."""
        args = [
            f"--keep-{rule}={count}"
            for rule, count in (
                ("last", self.last),
                ("daily", self.daily),
                ("weekly", self.weekly),
                ("monthly", self.monthly),
                ("yearly", self.yearly),
            )
            if count > 0
        ]
        if not args:
            raise UsageError("every BACKUP_KEEP_* is 0: retention would remove every archive")
        return args

    def describe(self) -> str:
        """The policy in words, for the output."""
        return ", ".join(a.removeprefix("--") for a in self.prune_args())


_PRUNED = re.compile(r"^(?:Would prune:|Pruning archive \(\d+/\d+\):)\s+(\S+)")


def pruned_archives(messages: list[str]) -> list[str]:
    """The archives borg prune --list removed (or, with --dry-run, would remove)."""
    return [m[1] for m in (_PRUNED.match(message) for message in messages) if m]
