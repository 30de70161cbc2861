"""The one door to root's authorized_keys (SSH_AUTHORIZED_KEYS), where the toolkit lets in keys
of its own, each restricted to one forced command: vs-move's one-time copy keys on a slave,
vs-backup's slave keys (append-only borg serve) on the master. Each such line ends with a mark
(``vs-tools-push:NAME``, ``vs-backup:HOST``) by which it is replaced or removed; every other
line, the file's mode and its owner are kept; writers take one lock."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from vstools.errors import HostError
from vstools.host.fsutil import atomic_write, locked

_KIND = re.compile(r"(ssh|ecdsa|sk)-[a-z0-9@.-]+")
_BLOB = re.compile(r"[A-Za-z0-9+/]+={0,2}")
_OPTION_VALUE = re.compile(r'[^"\\\n]*')


def public_key_words(text: str, *, whose: str) -> tuple[str, str]:
    """The type and the base64 blob of an OpenSSH public key that came from elsewhere (a slave),
    checked word by word: nothing in it may add an option or a line."""
    words = text.split()
    if len(words) < 2 or not _KIND.fullmatch(words[0]) or not _BLOB.fullmatch(words[1]):
        raise HostError(f"{whose}: not an SSH public key: {text[:40]!r}")
    return words[0], words[1]


def restricted_line(
    public_key: str,
    *,
    whose: str,
    command: str,
    mark: str,
    source: str | None = None,
    expires: str | None = None,
) -> str:
    """One authorized_keys line: no terminal, forwarding or agent (``restrict``), only
    ``command`` whatever the client asks, from ``source`` only and until ``expires``
    (YYYYMMDDHHMM, UTC) when given; ``mark`` ends it."""
    kind, blob = public_key_words(public_key, whose=whose)
    values = [command, *(v for v in (source, expires) if v is not None)]
    if not all(_OPTION_VALUE.fullmatch(value) for value in values):
        raise HostError(f"unsafe value for an authorized_keys option: {values!r}")
    options = ["restrict"]
    if source is not None:
        options.append(f'from="{source}"')
    if expires is not None:
        options.append(f'expiry-time="{expires}Z"')
    options.append(f'command="{command}"')
    return f"{','.join(options)} {kind} {blob} {mark}\n"


def replace_marked(text: str, mark: str, line: str | None) -> str:
    """``text`` without the lines ending with ``mark``, then ``line`` if given."""
    ending = f" {mark}"
    kept = [old for old in text.splitlines(keepends=True) if not old.rstrip("\n").endswith(ending)]
    if kept and not kept[-1].endswith("\n"):
        kept[-1] += "\n"
    if line is not None:
        kept.append(line if line.endswith("\n") else f"{line}\n")
    return "".join(kept)


def set_marked(path: Path, mark: str, line: str | None, *, lock_dir: Path) -> bool:
    """Put ``line`` in ``path`` in place of the one marked ``mark`` (or only remove that one);
    whether the file changed."""
    with locked(lock_dir / "authorized_keys.lock", what="root's authorized_keys", timeout_s=30.0):
        try:
            text = path.read_text()
            info = path.stat()
        except FileNotFoundError:
            if line is None:
                return False
            text, info = "", None
        new = replace_marked(text, mark, line)
        if new == text:
            return False
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        atomic_write(path, new, mode=0o600 if info is None else info.st_mode & 0o7777)
        if info is not None:
            shutil.chown(path, info.st_uid, info.st_gid)
        return True
