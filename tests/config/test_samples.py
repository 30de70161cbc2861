"""The samples of etc/vs-tools are valid, and say something about every key the parsers know,
so a key added to a schema cannot be forgotten in the samples."""

from __future__ import annotations

from pathlib import Path

import pytest

from vstools.config.create import CreateConf
from vstools.config.files import parse_file
from vstools.config.guest import GuestConf
from vstools.config.monitor import MonitorConf
from vstools.config.settings import Settings

ETC = Path(__file__).resolve().parents[2] / "etc" / "vs-tools"
SAMPLES = sorted(p.name for p in ETC.iterdir())


@pytest.mark.parametrize("name", SAMPLES)
def test_sample_is_valid_without_warnings(name: str) -> None:
    model = parse_file(ETC / name)
    assert getattr(model, "warnings", ()) == ()


@pytest.mark.parametrize(
    ("name", "schema"),
    [
        ("create.conf", CreateConf.SCHEMA),
        ("monitor.conf", MonitorConf.SCHEMA),
        ("vs-tools.conf", Settings.SCHEMA),
        ("guest.conf.sample", GuestConf.SCHEMA),
    ],
)
def test_sample_mentions_every_key(name: str, schema: tuple[object, ...]) -> None:
    text = (ETC / name).read_text()
    missing = [f.key for f in schema if f"{f.key}=" not in text]  # type: ignore[attr-defined]
    assert not missing, f"{name} says nothing about {missing}"
