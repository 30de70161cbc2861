"""The man pages and the completion scripts say what the parsers say: generated the way the
package build generates them (scripts/manpages.py and scripts/completion.py, run by Debian's
python3 with python3-argparse-manpage, python3-shtab and go-md2man), then compared with each
command's parser: the options, their help, the description, the configuration keys; and the
completion (bash and zsh) offers the parser's options and the host's guests and slaves."""

from __future__ import annotations

import argparse
import importlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from vstools.config.create import CreateConf
from vstools.config.guest import GuestConf
from vstools.config.monitor import MonitorConf
from vstools.config.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = sorted(p.stem for p in (ROOT / "vstools" / "cli").glob("vs_*.py"))
SYSTEM_PYTHON = "/usr/bin/python3"  # the interpreter that builds the package


def _tools_missing() -> str | None:
    probe = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import shtab, build_manpages"], capture_output=True, check=False
    )
    if probe.returncode != 0 or shutil.which("go-md2man") is None or shutil.which("man") is None:
        return (
            "python3-argparse-manpage, python3-shtab, go-md2man or man-db missing (make deb-deps)"
        )
    return None


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    why = _tools_missing()
    if why:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(why)
        pytest.skip(why)
    out = tmp_path_factory.mktemp("generated")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    for script, where in (("manpages.py", "man"), ("completion.py", "completion")):
        subprocess.run(
            [SYSTEM_PYTHON, str(ROOT / "scripts" / script), "--out", str(out / where)],
            env=env,
            check=True,
        )
    return out


def _parser(module_name: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = importlib.import_module(
        f"vstools.cli.{module_name}"
    ).build_parser()
    return parser


def _words(text: str) -> str:
    return " ".join(text.split())


def _render(page: Path) -> str:
    """The page as man shows it, on one very wide line per paragraph (UTF-8: the formats page
    quotes look-alike digits such as ٨٠ on purpose)."""
    done = subprocess.run(
        ["man", "--warnings", "-l", str(page)],
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "MANWIDTH": "1000"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert "warning" not in done.stderr, done.stderr
    return done.stdout


def _options_section(rendered: str) -> str:
    return rendered.split("\nOPTIONS\n", 1)[1].split("\nEXIT STATUS\n", 1)[0]


@pytest.mark.parametrize("module_name", COMMANDS)
def test_each_page_says_what_help_says(generated: Path, module_name: str) -> None:
    parser = _parser(module_name)
    rendered = _render(generated / "man" / f"{parser.prog}.8")
    assert rendered.startswith(f"{parser.prog.upper()}(8)")
    # The options listed are exactly the parser's (argparse's own -h/--help aside).
    listed = set(re.findall(r"^ {7}(-[^\s,]+(?:, -[^\s,]+)*)", _options_section(rendered), re.M))
    listed_options = {o for entry in listed for o in entry.split(", ")}
    # A positional whose metavar looks like an option (vs-exec's "-- CMD") is not an option.
    listed_options -= {str(a.metavar).split()[0] for a in parser._actions if not a.option_strings}
    options = {
        option
        for action in parser._actions  # argparse has no public list of its actions
        for option in action.option_strings
        if option not in ("-h", "--help")
    }
    assert listed_options == options
    # Each help text, the description and the synopsis, word for word.
    text = _words(rendered)
    for action in parser._actions:
        if action.help and action.option_strings != ["-h", "--help"]:
            expanded = parser._get_formatter()._expand_help(action)  # %(default)s and co.
            assert _words(expanded) in text, action.option_strings
    assert _words(parser.description or "") in text
    usage = _words(parser.format_usage().split(":", 1)[1])
    assert usage in text
    assert "EXIT STATUS" in rendered and "SEE ALSO" in rendered


def test_vs_tools_conf_page_has_every_key(generated: Path) -> None:
    rendered = _render(generated / "man" / "vs-tools.conf.5")
    assert rendered.startswith("VS-TOOLS.CONF(5)")
    keys = [
        f.key for schema in (Settings, CreateConf, MonitorConf, GuestConf) for f in schema.SCHEMA
    ]
    missing = [key for key in keys if key not in rendered]
    assert keys and not missing, missing


def _complete(script: Path, env: dict[str, str], *words: str) -> list[str]:
    code = (
        f'. "{script}"\n'
        f"COMP_WORDS=({' '.join(repr(w) for w in words)})\n"
        "COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))\n"
        'f=$(complete -p "${COMP_WORDS[0]}" | sed "s/.* -F \\([^ ]*\\) .*/\\1/")\n'
        '"$f"\nprintf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    done = subprocess.run(
        ["bash", "--norc", "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.split()


@pytest.mark.parametrize("module_name", COMMANDS)
def test_completion_offers_the_parsers_options(generated: Path, module_name: str) -> None:
    parser = _parser(module_name)
    options = sorted(
        {o for action in parser._actions for o in action.option_strings if o.startswith("--")}
    )
    offered = _complete(generated / "completion" / "bash" / parser.prog, {"PATH": "/usr/bin:/bin"},
                        parser.prog, "--")  # fmt: skip
    assert sorted(offered) == options


def test_completion_names_guests_and_slaves_from_the_files(generated: Path, tmp_path: Path) -> None:
    etc, guests = tmp_path / "etc", tmp_path / "vservers"
    etc.mkdir()
    for name in ("web", "db", "half"):
        (guests / name).mkdir(parents=True)
    for name in ("web", "db"):
        (guests / name / "guest.conf").write_text("")  # "half" has none: not a guest
    (etc / "vs-tools.conf").write_text(f'# where\nGUESTS_CONF_DIR="{guests}"  # here\n')
    (etc / "slaves.conf").write_text("# the pool\nslave1:compress,bwlimit=10m\n\n slave2 \n")
    env = {"PATH": "/usr/bin:/bin", "VS_ETC_DIR": str(etc)}
    scripts = generated / "completion" / "bash"
    assert _complete(scripts / "vs-control", env, "vs-control", "--name", "") == ["db", "web"]
    assert _complete(scripts / "vs-enter", env, "vs-enter", "w") == ["web"]
    assert _complete(scripts / "vs-move", env, "vs-move", "--dst_host", "") == ["slave1", "slave2"]
    assert _complete(scripts / "vs-create", env, "vs-create", "--clone", "d") == ["db"]
    assert _complete(scripts / "vs-create", env, "vs-create", "--name", "") == []  # a new name
    assert "parse" in _complete(scripts / "vs-fonctions", env, "vs-fonctions", "pa")
    # VS_GUESTS_CONF_DIR wins over vs-tools.conf, as for the commands.
    other = tmp_path / "other"
    (other / "solo").mkdir(parents=True)
    (other / "solo" / "guest.conf").write_text("")
    env["VS_GUESTS_CONF_DIR"] = str(other)
    assert _complete(scripts / "vs-control", env, "vs-control", "--name", "") == ["solo"]


# zsh's completion system needs a terminal to drive; the parts are checked instead: the script
# parses, lists the parser's options, and its name functions answer from the files.
ZSH_NAMES = """
compadd() { if [[ $1 == -a ]]; then print -l -- ${(P)2}; else shift; print -l -- "$@"; fi }
source "$1" 2>/dev/null
print -l -- "${(@P)2}"
print -- ---
$3
"""


def _zsh(
    script: Path, env: dict[str, str], array: str, function: str
) -> tuple[list[str], list[str]]:
    done = subprocess.run(
        ["zsh", "-fc", ZSH_NAMES, "zsh", str(script), array, function],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    options, names = done.stdout.split("---\n", 1)
    return options.splitlines(), names.split()


@pytest.mark.parametrize("module_name", COMMANDS)
def test_zsh_completion_lists_the_parsers_options(generated: Path, module_name: str) -> None:
    if shutil.which("zsh") is None:
        pytest.skip("zsh is not installed")
    parser = _parser(module_name)
    script = generated / "completion" / "zsh" / f"_{parser.prog}"
    assert script.read_text().startswith(f"#compdef {parser.prog}\n")
    subprocess.run(["zsh", "-n", str(script)], check=True)
    array = "_shtab_" + parser.prog.replace("-", "_") + "_options"
    specs, _ = _zsh(script, {"PATH": "/usr/bin:/bin"}, array, "true")
    option = re.compile(r"(?<![\w-])--?[a-zA-Z0-9][\w-]*")
    offered = {o for spec in specs for o in option.findall(spec.split("[")[0])}
    options = {o for action in parser._actions for o in action.option_strings}
    assert offered == options


def test_zsh_completion_names_guests_and_slaves(generated: Path, tmp_path: Path) -> None:
    if shutil.which("zsh") is None:
        pytest.skip("zsh is not installed")
    etc, guests = tmp_path / "etc", tmp_path / "vservers"
    etc.mkdir()
    for name in ("web", "db", "half"):
        (guests / name).mkdir(parents=True)
    for name in ("web", "db"):
        (guests / name / "guest.conf").write_text("")
    (etc / "vs-tools.conf").write_text(f"GUESTS_CONF_DIR='{guests}'\n")
    (etc / "slaves.conf").write_text("# the pool\nslave1:compress\n\n slave2 \n")
    env = {"PATH": "/usr/bin:/bin", "VS_ETC_DIR": str(etc)}
    scripts = generated / "completion" / "zsh"
    assert _zsh(scripts / "_vs-control", env, "x", "_vs_tools_guests")[1] == ["db", "web"]
    assert _zsh(scripts / "_vs-move", env, "x", "_vs_tools_hosts")[1] == ["slave1", "slave2"]
    assert "parse" in _zsh(scripts / "_vs-fonctions", env, "x", "_vs_tools_functions")[1]
