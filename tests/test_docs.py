"""The documentation follows the code: every option of every command is on its page, the pages
say which commands are not implemented yet (and only those), every key of every KEY=VALUE file
is in the formats reference, and every relative link in docs/ leads to a file."""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from types import ModuleType

import pytest

from vstools.config.create import CreateConf
from vstools.config.guest import GuestConf
from vstools.config.monitor import MonitorConf
from vstools.config.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
COMMANDS = sorted(p.stem for p in (ROOT / "vstools" / "cli").glob("vs_*.py"))
NOT_IMPLEMENTED = "not implemented yet"
# [text](target) or [text](target "title"); images (![...]) match too, which is wanted.
LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")


def page_of(module_name: str) -> Path:
    return DOCS / "commands" / (module_name.replace("_", "-") + ".md")


def command_module(module_name: str) -> ModuleType:
    return importlib.import_module(f"vstools.cli.{module_name}")


def test_every_command_is_found() -> None:
    assert "vs_control" in COMMANDS and "vs_check" in COMMANDS


@pytest.mark.parametrize("module_name", COMMANDS)
def test_every_option_is_on_its_page(module_name: str) -> None:
    page = page_of(module_name)
    assert page.is_file(), f"{module_name} has no page {page.relative_to(ROOT)}"
    text = page.read_text(encoding="utf-8")
    parser = command_module(module_name).build_parser()
    missing = [
        option
        for action in parser._actions  # argparse has no public list of its actions
        for option in action.option_strings
        if option not in text
    ]
    assert not missing, f"{page.relative_to(ROOT)} does not mention {', '.join(missing)}"


@pytest.mark.parametrize("module_name", COMMANDS)
def test_no_page_says_a_built_command_is_not_built(module_name: str) -> None:
    """Every command is built: neither its page nor the user guide may say otherwise."""
    for page in (page_of(module_name), ROOT / "docs" / "user-guide.md"):
        text = page.read_text(encoding="utf-8")
        assert NOT_IMPLEMENTED not in text, f"{page.relative_to(ROOT)} says {NOT_IMPLEMENTED!r}"
        assert "exits 69" not in text and "exit 69" not in text, page.relative_to(ROOT)
        assert "| not implemented |" not in text, page.relative_to(ROOT)


@pytest.mark.parametrize("schema", [CreateConf, MonitorConf, GuestConf, Settings])
def test_every_key_is_in_config_formats(schema: type) -> None:
    text = (DOCS / "config-formats.md").read_text(encoding="utf-8")
    missing = [field.key for field in schema.SCHEMA if f"`{field.key}`" not in text]
    assert not missing, f"docs/config-formats.md lacks {schema.__name__} keys {missing}"


def relative_links(text: str) -> list[str]:
    """Targets of the markdown links outside code, without URLs and in-page anchors."""
    prose = INLINE_CODE.sub("", FENCE.sub("", text))
    targets = []
    for target in LINK.findall(prose):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # http:, https:, mailto:, file: ... and links inside the same page
        targets.append(target)
    return targets


def test_relative_links_helper() -> None:
    text = (
        "[a](x.md) [b](../y.md#part) [c](https://example.org) [d](#here)\n"
        "`[e](inline.md)`\n```\n[f](fenced.md)\n```\n"
    )
    assert relative_links(text) == ["x.md", "../y.md#part"]


@pytest.mark.parametrize("page", sorted(DOCS.rglob("*.md")), ids=lambda p: str(p.relative_to(DOCS)))
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for target in relative_links(page.read_text(encoding="utf-8")):
        path = target.split("#", 1)[0]
        if not (page.parent / path).exists():
            broken.append(target)
    assert not broken, f"docs/{page.relative_to(DOCS)}: broken links {broken}"
