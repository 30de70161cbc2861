#!/usr/bin/python3
"""Write the man pages: one in section 8 per vs-* command, from its argument parser (with
argparse-manpage, so a page says what ``--help`` says), and vs-tools.conf(5), the configuration
files, from docs/config-formats.md (with go-md2man).

Run by the package build (debian/rules) and by tests/packaging with Debian's python3, which has
python3-argparse-manpage (its module is ``build_manpages`` up to 1.x, ``argparse_manpage``
after)::

    PYTHONPATH=. python3 scripts/manpages.py --out DIR
"""

from __future__ import annotations

import argparse
import importlib
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTION = "8"
MANUAL = "VS-Tools Manual"
CONFIG_PAGE = "vs-tools.conf"
CONFIG_FILES = (
    "vs-tools.conf networks.conf create.conf firewall.conf monitor.conf slaves.conf"
    " backup.conf guest.conf"
)


def command_modules() -> list[str]:
    """The module of every vs-* command (vstools/cli/vs_*.py), sorted."""
    return sorted(p.stem for p in (ROOT / "vstools" / "cli").glob("vs_*.py"))


def _manpage_class() -> type:
    try:
        from argparse_manpage.manpage import Manpage
    except ImportError:
        from build_manpages.manpage import Manpage  # Debian 12: argparse-manpage 1.2
    return Manpage  # type: ignore[no-any-return]


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("-", "\\-")


def reflow(text: str) -> str:
    """A description wrapped for ``--help`` as lines of man text: a source line break is kept
    only after a sentence (``Transactional: ...`` and ``Output: ...`` start lines of their
    own), so man fills the rest to the reader's width."""
    out: list[str] = []
    for line in text.strip().splitlines():
        if out and not out[-1].endswith((".", ":")):
            out[-1] += " " + line.strip()
        else:
            out.append(line.strip())
    return "\n".join(out)


def render_command_page(module_name: str, version: str) -> str:
    """The roff page of one command: argparse-manpage's NAME, SYNOPSIS, DESCRIPTION and OPTIONS
    under a section-8 header, then EXIT STATUS (the parser's epilog) and SEE ALSO."""
    module = importlib.import_module(f"vstools.cli.{module_name}")
    parser = module.build_parser()
    prog = parser.prog
    summary = (module.__doc__ or "").strip().splitlines()[0]
    parser.man_short_description = summary.split(": ", 1)[-1].rstrip(".")
    parser.description = reflow(parser.description or "")
    body = str(_manpage_class()(parser))
    lines = body.splitlines()
    if lines and lines[0].startswith(".TH "):
        lines[0] = f'.TH {prog.upper()} {SECTION} "" "vs-tools {version}" "{MANUAL}"'
    if parser.epilog:
        lines += [".SH EXIT STATUS", _escape(parser.epilog.split(": ", 1)[-1])]
    others = [m.replace("_", "-") for m in command_modules() if m != module_name]
    see_also = [f"\\fB{_escape(CONFIG_PAGE)}\\fR(5)"]
    see_also += [f"\\fB{_escape(name)}\\fR({SECTION})" for name in others]
    lines += [
        ".SH FILES",
        "/etc/vs-tools/ (the configuration), /etc/vservers/NAME/ (each guest's),"
        " /var/lib/vservers/NAME/ (its root), /var/lib/vs-tools/, /run/vs-tools/",
        ".SH SEE ALSO",
        ",\n".join(see_also),
        ".PP",
        "/usr/share/doc/vs\\-tools/commands/" + _escape(prog) + ".md",
    ]
    return "\n".join(lines) + "\n"


def config_markdown(text: str, version: str) -> str:
    """docs/config-formats.md as the markdown of vs-tools.conf(5): a title block, NAME, and the
    page's own title turned into DESCRIPTION."""
    lines = text.splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    head = [
        f'% {CONFIG_PAGE.upper()} 5 "" "vs-tools {version}" "{MANUAL}"',
        "",
        "# NAME",
        "",
        f"{CONFIG_PAGE}, {CONFIG_FILES.split(' ', 1)[1].replace(' ', ', ')}"
        " - the configuration files of VS-Tools",
        "",
        "# DESCRIPTION",
    ]
    # Links between the docs mean nothing in a man page: keep their text.
    body = re.sub(r"\[([^\]]+)\]\([^)]+\.md(#[^)]*)?\)", r"\1", "\n".join(lines))
    tail = ["", "# SEE ALSO", "", "**vs-check**(8), **vs-setup**(8), **vs-create**(8)"]
    return "\n".join(head) + "\n" + body + "\n" + "\n".join(tail) + "\n"


def render_config_page(version: str) -> str:
    """vs-tools.conf(5), rendered by go-md2man."""
    markdown = config_markdown((ROOT / "docs" / "config-formats.md").read_text(), version)
    done = subprocess.run(["go-md2man"], input=markdown, capture_output=True, text=True, check=True)
    return done.stdout


def main(argv: list[str] | None = None) -> int:
    """Write every page into --out (NAME.8, vs-tools.conf.5)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="directory to write into")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from vstools import __version__

    args.out.mkdir(parents=True, exist_ok=True)
    for module_name in command_modules():
        page = args.out / f"{module_name.replace('_', '-')}.{SECTION}"
        page.write_text(render_command_page(module_name, __version__))
    (args.out / f"{CONFIG_PAGE}.5").write_text(render_config_page(__version__))
    return 0


if __name__ == "__main__":
    sys.exit(main())
