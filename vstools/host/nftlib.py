"""libnftables in this process: the one door to nftables (what ``nft`` itself runs, without
forking it).

Why not the ``nft`` program: forking and exec'ing it costs about 3 ms and it rebuilds its
cache (every chain of the table) on each call; one context in this process reads the loaded
state and applies a change with one cache. Why not Debian's ``python3-nftables``: it is the
same ctypes binding, but lives in the system's site-packages, which the venv does not see;
the library itself (``libnftables1``, by its soname) comes with the ``nftables`` package.

A command text is one kernel transaction, exactly as with ``nft -f``: all of it applies or
none (the previous rules stay in force). The context acts in the network namespace of the
calling thread, as a child process would."""

from __future__ import annotations

import ctypes
import functools
import logging

from vstools.errors import HostError

log = logging.getLogger("vstools.run")

SONAME = "libnftables.so.1"  # by soname: no ctypes.util.find_library (it runs ldconfig -p)
NFT_CTX_DEFAULT = 0
NFT_CTX_OUTPUT_JSON = 1 << 4  # libnftables.h: enum nft_ctx_output_flags


class NftError(HostError):
    """libnftables refused a command text; carries nft's own error text."""

    def __init__(self, what: str, error: str) -> None:
        self.error = error
        lines = [line for line in error.strip().splitlines() if line.strip()]
        detail = lines[0] if lines else "no error output"
        if len(lines) > 1:
            detail += f" (+{len(lines) - 1} more lines)"
        super().__init__(f"nft {what} failed: {detail}")


class _Lib:
    """The loaded library and the signatures of the few functions used."""

    def __init__(self) -> None:
        try:
            lib = ctypes.CDLL(SONAME)
        except OSError as exc:
            raise HostError(f"cannot load {SONAME} (Debian package libnftables1): {exc}") from None
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        for name in ("nft_ctx_buffer_output", "nft_ctx_buffer_error"):
            getattr(lib, name).argtypes = [ctypes.c_void_p]
            getattr(lib, name).restype = ctypes.c_int
        for name in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
            getattr(lib, name).argtypes = [ctypes.c_void_p]
            getattr(lib, name).restype = ctypes.c_char_p
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        self.lib = lib


@functools.cache
def _library() -> _Lib:
    """The library, loaded once per process."""
    return _Lib()


class NftContext:
    """One libnftables context, its output and errors buffered. ``json`` lists as ``nft -j``."""

    def __init__(self, *, json: bool = False) -> None:
        self._lib = _library().lib
        self._ctx = self._lib.nft_ctx_new(NFT_CTX_DEFAULT)
        if not self._ctx:
            raise HostError("libnftables: nft_ctx_new failed")
        self._lib.nft_ctx_buffer_output(self._ctx)
        self._lib.nft_ctx_buffer_error(self._ctx)
        if json:
            self._lib.nft_ctx_output_set_flags(self._ctx, NFT_CTX_OUTPUT_JSON)

    def __del__(self) -> None:
        ctx, self._ctx = getattr(self, "_ctx", None), None
        if ctx:
            self._lib.nft_ctx_free(ctx)

    def run(self, text: str, *, check: bool = True) -> tuple[bool, str, str]:
        """Run ``text`` (``nft -f`` syntax, one transaction): (ok, output, errors). With
        ``check`` a failure raises NftError."""
        first = text.lstrip().split("\n", 1)[0][:100]
        log.debug("+ nft -f - (libnftables, %d lines: %s)", text.count("\n") + 1, first)
        status = self._lib.nft_run_cmd_from_buffer(self._ctx, text.encode())
        output = (self._lib.nft_ctx_get_output_buffer(self._ctx) or b"").decode()
        errors = (self._lib.nft_ctx_get_error_buffer(self._ctx) or b"").decode()
        if check and status != 0:
            raise NftError(f"-f - ({first})", errors)
        return status == 0, output, errors
