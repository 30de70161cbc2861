"""The toolkit runs on Debian 12's own libraries as well as on the venv's newer ones: sh 1.14
and 2.x, pyroute2 0.7 and 0.9, python3-seccomp and pyseccomp (docs/packaging.md). The package
test (tests/deb) runs it for real on Debian's; these tests keep the seams in place here."""

from __future__ import annotations

import re
from pathlib import Path

from vstools.host.netlink import attr
from vstools.host.ssh import run_argv, sh_call_options

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted((ROOT / "vstools").rglob("*.py"))


def test_sh_options_fit_each_major_version() -> None:
    assert "_return_cmd" not in sh_call_options("1.14.2")  # 1.x rejects it
    assert sh_call_options("2.4.0")["_return_cmd"] is True  # 2.x returns a string without it
    assert sh_call_options("1.14.2")["_ok_code"] == list(range(256))


def test_run_argv_works_with_the_installed_sh() -> None:
    done = run_argv(["sh", "-c", "cat; echo err >&2; exit 3"], input="in\n")
    assert (done.code, done.stdout, done.stderr) == (3, "in\n", "err\n")


class _Msg:
    """A netlink message as pyroute2 0.7 answers: attributes only through get_attr."""

    def __init__(self, **attrs: object) -> None:
        self.attrs = attrs

    def get_attr(self, name: str) -> object:
        return self.attrs.get(name)

    def get(self, key: object, default: object = None) -> object:
        return default  # 0.7: a full NLA name is not found this way


def test_attr_reads_plain_and_nested_attributes() -> None:
    link = _Msg(IFLA_MTU=1500, IFLA_LINKINFO=_Msg(IFLA_INFO_KIND="veth"))
    assert attr(link, "IFLA_MTU") == 1500
    assert attr(link, "IFLA_LINKINFO", "IFLA_INFO_KIND") == "veth"
    assert attr(link, "IFLA_ADDRESS") is None
    assert attr(_Msg(), "IFLA_LINKINFO", "IFLA_INFO_KIND", default="-") == "-"
    assert attr(_Msg(RTA_TABLE=0), "RTA_TABLE", default=254) == 0  # 0 is a value, not absent


# msg.get("IFLA_..."), msg.get(("IFLA_LINKINFO", ...)): None on pyroute2 0.7, Debian 12's.
NLA_GET = re.compile(r"""\.get\(\(?["'](IFLA|IFA|RTA|FRA|NDA)_""")


def test_netlink_attributes_are_read_with_attr() -> None:
    hits = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in SOURCES
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if NLA_GET.search(line)
    ]
    assert not hits, "use vstools.host.netlink.attr:\n" + "\n".join(hits)
    assert NLA_GET.search('link.get("IFLA_MTU")') and NLA_GET.search('m.get(("IFLA_LINKINFO", x))')
