"""Run a vs-* command in-process with its own environment and streams."""

from __future__ import annotations

import importlib
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vstools.cli.common import run_command


@dataclass
class Outcome:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def invoke(command: str, argv: list[str], env: Mapping[str, str]) -> Outcome:
    module = importlib.import_module(f"vstools.cli.{command.replace('-', '_')}")
    out, err = io.StringIO(), io.StringIO()
    code = run_command(
        module.build_parser(),
        module.handle,
        argv,
        env=env,
        stdout=out,
        stderr=err,
        stdin=io.StringIO(),  # not a terminal: no confirmation prompt
    )
    return Outcome(code, out.getvalue(), err.getvalue())
