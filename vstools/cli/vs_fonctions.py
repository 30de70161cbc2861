"""vs-fonctions: call one library function from the shell (or from the master over SSH)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from vstools.cli.common import Context, new_parser, run_command
from vstools.errors import UsageError
from vstools.functions import REGISTRY, call_function
from vstools.serialize import to_jsonable

DESCRIPTION = """\
Call one function of the VS-Tools library and print its result: plain text by default (a value
per line, key:value for records), JSON with --json. Only the functions of an explicit registry
can be called; --list names them with their arguments."""


def build_parser() -> argparse.ArgumentParser:
    """The parser of vs-fonctions: --list, or a FUNCTION and its ARGS."""
    parser = new_parser("vs-fonctions", DESCRIPTION, mutating=False)
    parser.add_argument("--list", action="store_true", help="list the callable functions")
    parser.add_argument("function", nargs="?", metavar="FUNCTION")
    parser.add_argument("arguments", nargs=argparse.REMAINDER, metavar="ARGS")
    return parser


def render_text(value: Any) -> list[str]:
    """The plain-text form of a result: scalars as they are, lists a line per item, records as
    ``key:value`` lines (nested values as compact JSON)."""
    plain = to_jsonable(value)
    if isinstance(plain, dict):
        return [f"{key}:{_scalar(item)}" for key, item in plain.items()]
    if isinstance(plain, list):
        return [_scalar(item) for item in plain]
    return [_scalar(plain)]


def _scalar(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def handle(ctx: Context) -> int:
    """Run vs-fonctions: list the callable functions with --list, or call FUNCTION with its ARGS and
    print the result (--json: as ``result`` of an object). UsageError when no FUNCTION is named."""

    if ctx.args.list:
        if ctx.json:
            ctx.emit_json(
                [
                    {"name": f.name, "signature": f.signature, "doc": f.doc}
                    for f in REGISTRY.values()
                ]
            )
        else:
            width = max(len(f.signature) for f in REGISTRY.values())
            ctx.emit_lines(f"{f.signature:<{width}}  {f.doc}" for f in REGISTRY.values())
        return 0
    if not ctx.args.function:
        raise UsageError("name a FUNCTION (vs-fonctions --list names them)")
    args = list(ctx.args.arguments)
    if args[:1] == ["--"]:
        args = args[1:]
    result = call_function(ctx.args.function, args, ctx.env)
    if ctx.json:
        ctx.emit_json({"result": result})
    else:
        ctx.emit_lines(render_text(result))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of vs-fonctions: returns its exit status."""
    return run_command(build_parser(), handle, argv)
