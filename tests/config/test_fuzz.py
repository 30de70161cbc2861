"""Catalogue P5: fuzzing finds only clean errors. Any text given to any parser either parses or
raises ConfigError whose problems point inside the file; and every file the tool can render
reads back to an equal model (model -> text -> model)."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vstools.config.create import CreateConf
from vstools.config.files import FILE_KINDS
from vstools.config.firewall import parse_firewall, render_firewall
from vstools.config.guest import MAX_USERNS_CONTEXT, GuestConf
from vstools.config.keyvalue import KeyValueFile
from vstools.config.monitor import MonitorConf
from vstools.config.networks import parse_networks, render_networks
from vstools.config.pool import parse_backup, parse_slaves, render_backup, render_slaves
from vstools.config.settings import Settings
from vstools.errors import ConfigError

PARSERS: dict[str, Any] = {name: kind.parse for name, kind in FILE_KINDS.items()}

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Fragments that reach deep into the grammars, mixed with arbitrary characters.
FRAGMENTS = st.sampled_from(
    [
        "allow",
        "deny",
        "from",
        "to",
        "enable",
        "log",
        "tcp/",
        "udp/",
        "icmp",
        "all",
        "0/0",
        ",",
        ":",
        "/",
        "=",
        '"',
        "'",
        "\\",
        "#",
        " ",
        "\t",
        "\n",
        "198.51.100.",
        "203.0.113.0/24",
        "80",
        "65535",
        "0",
        "٨",
        "８",
        "_",
        "+",
        "-",
        "$(",
        "`",
        "NAME",
        "IP",
        "CONTEXT",
        "MTU",
        "DEFAULT_CPU_LIMIT",
        "RSS_THRESHOLD",
        "SOCKETS_FILTER",
        "hot",
        "cold",
        "noselect",
        "bwlimit=",
        "10m",
        "1/4",
        "yes",
        "no",
        "\r",
        "\x00",
        "é",
        "vsh-01",
        "web",
    ]
)
TEXTS = st.one_of(
    st.text(max_size=200),
    st.lists(st.one_of(FRAGMENTS, st.text(max_size=3)), max_size=40).map("".join),
)


def _check_clean(name: str, text: str) -> None:
    try:
        PARSERS[name](name, text)
    except ConfigError as exc:
        line_count = text.count("\n") + 1
        assert exc.problems
        for problem in exc.problems:
            assert problem.path == name
            assert 0 <= problem.line <= line_count
            assert problem.col >= 0
            assert problem.message and "\n" not in problem.message


@FUZZ
@given(name=st.sampled_from(sorted(PARSERS)), text=TEXTS)
def test_p5_fuzzed_text_gives_a_model_or_clean_errors(name: str, text: str) -> None:
    _check_clean(name, text)


# ---- round trips ------------------------------------------------------------------------------

OCTET = st.integers(0, 255)
PORT = st.integers(1, 65535)
TEST_NETS = ["198.51.100", "203.0.113", "198.18.0", "198.19.7"]


@st.composite
def addresses(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["host", "net", "any", "name"]))
    base = draw(st.sampled_from(TEST_NETS))
    if kind == "host":
        return f"{base}.{draw(OCTET)}"
    if kind == "net":
        return f"{base}.0/24"
    if kind == "any":
        return "0/0"
    return draw(st.sampled_from(["mirror.example.org", "ns1.example.net", "host-1.test"]))


@st.composite
def services(draw: st.DrawFn) -> str:
    proto = draw(st.sampled_from(["tcp", "udp", "icmp", "all"]))
    if proto in ("tcp", "udp"):
        low = draw(PORT)
        high = draw(st.integers(low, 65535))
        form = draw(st.sampled_from(["one", "range", "open-high", "open-low", "none"]))
        port = {
            "one": str(low),
            "range": f"{low}:{high}",
            "open-high": f"{low}:",
            "open-low": f":{high}",
            "none": "",
        }[form]
        return f"{proto}/{port}" if port else proto
    if proto == "icmp" and draw(st.booleans()):
        return f"icmp/{draw(OCTET)}"
    return proto


@st.composite
def firewall_texts(draw: st.DrawFn) -> str:
    lines = []
    if draw(st.booleans()):
        lines.append("enable")
    if draw(st.booleans()):
        lines.append("log")
    for _ in range(draw(st.integers(0, 8))):
        action = draw(st.sampled_from(["allow", "deny"]))
        direction = draw(st.sampled_from(["from", "to"]))
        addrs = ",".join(draw(st.lists(addresses(), min_size=1, max_size=3)))
        side = draw(st.sampled_from(["", " from", " to"]))
        svcs = ",".join(draw(st.lists(services(), min_size=1, max_size=3)))
        lines.append(f"{action} {direction} {addrs}{side} {svcs}")
    return "\n".join(lines) + "\n"


@st.composite
def networks_texts(draw: st.DrawFn) -> str:
    lines = []
    for vlan, third in enumerate(draw(st.lists(st.integers(0, 255), unique=True, max_size=6))):
        gateway = draw(st.integers(1, 254))
        form = draw(st.sampled_from(["comma", "colon"]))
        domain = draw(st.sampled_from(["", "example.org"]))
        ns = " ".join(f"198.51.100.{n}" for n in draw(st.lists(OCTET, max_size=2)))
        net = f"198.18.{third}.0/24,198.18.{third}.{gateway}"
        if form == "comma":
            tail = f",{domain},{ns}" if ns else (f",{domain}" if domain else "")
            lines.append(f"{vlan},{net}{tail}")
        else:
            tail = f":{ns}:{domain}" if domain else (f":{ns}" if ns else "")
            lines.append(f"{vlan}:{net.replace(',', ':')}{tail}")
    return "\n".join(lines) + "\n"


@st.composite
def slaves_texts(draw: st.DrawFn) -> str:
    lines = []
    for index in range(draw(st.integers(0, 6))):
        options = draw(
            st.lists(
                st.sampled_from(
                    ["noselect", "compress", "bwlimit=10m", "bwlimit=512k", "bwlimit=300"]
                ),
                unique_by=lambda o: o.split("=")[0],
                max_size=3,
            )
        )
        lines.append(f"vsh-{index:02d}" + (":" + ",".join(options) if options else ""))
    return "\n".join(lines) + "\n"


@st.composite
def backup_texts(draw: st.DrawFn) -> str:
    names = draw(
        st.lists(
            st.from_regex(r"[a-z][a-z0-9-]{0,10}[a-z0-9]", fullmatch=True), unique=True, max_size=6
        )
    )
    return "".join(f"{n}:{draw(st.sampled_from(['hot', 'cold']))}\n" for n in names)


@FUZZ
@given(text=firewall_texts())
def test_firewall_round_trip(text: str) -> None:
    model = parse_firewall("f", text)
    again = parse_firewall("f", render_firewall(model))
    assert again == model
    assert render_firewall(again) == render_firewall(model)


@FUZZ
@given(text=networks_texts())
def test_networks_round_trip(text: str) -> None:
    model = parse_networks("n", text)
    assert parse_networks("n", render_networks(model)) == model


@FUZZ
@given(text=slaves_texts())
def test_slaves_round_trip(text: str) -> None:
    model = parse_slaves("s", text)
    assert parse_slaves("s", render_slaves(model)) == model


@FUZZ
@given(text=backup_texts())
def test_backup_round_trip(text: str) -> None:
    model = parse_backup("b", text)
    assert parse_backup("b", render_backup(model)) == model


VALUES: dict[str, st.SearchStrategy[str]] = {
    "mb": st.integers(1, 10**6).map(str),
    "count": st.integers(1, 10**5).map(str),
    "bool": st.sampled_from(["yes", "no", "true", "off"]),
    "ratio": st.integers(1, 64).flatmap(lambda b: st.integers(1, b).map(lambda a: f"{a}/{b}")),
    "ip": st.sampled_from(TEST_NETS).flatmap(lambda n: OCTET.map(lambda o: f"{n}.{o}")),
    "path": st.from_regex(r"/[a-z0-9_.-]{1,10}(/[a-z0-9_.-]{1,10}){0,2}", fullmatch=True),
    "host": st.sampled_from(["example.org", "mail.example.net", "localhost"]),
    "pct": st.integers(0, 100).map(str),
}

KV_VALUES: dict[str, st.SearchStrategy[str]] = {
    "NAME": st.from_regex(r"[a-z][a-z0-9-]{0,20}[a-z0-9]", fullmatch=True),
    "CONTEXT": st.integers(1, 65535).map(str),
    "IP": VALUES["ip"],
    "HOSTNAME": VALUES["host"],
    "DOMAIN": VALUES["host"],
    "DEFAULT_DOMAIN": VALUES["host"],
    "SMTP_HOST": VALUES["host"],
    "NAMESERVER": st.lists(VALUES["ip"], max_size=3).map(" ".join),
    "DEFAULT_NAMESERVER": st.lists(VALUES["ip"], max_size=3).map(" ".join),
    "MONITOR_MAILTO": st.sampled_from(["root", "admin@example.org,ops@example.org"]),
    "SOCKETS_FILTER": st.sampled_from(["/apache2$/var/run/apache2/cgisock\\.", "^udp:.*:53$"]),
    "MAIN_MIRROR": st.just("http://deb.debian.org/debian"),
    "UPDATE_MIRROR": st.just("https://security.debian.org/debian-security"),
    "DEFAULT_DEVICE": st.sampled_from(["eth0", "ens3", "bond0.12"]),
    "MTU": st.integers(68, 9000).map(str),
    "DEFAULT_PREFIX": st.integers(0, 32).map(str),
    "DEFAULT_VLAN": st.integers(0, 4094).map(str),
    "CONTEXT_METHOD": st.sampled_from(["dec", "hex", "cnt"]),
    "DEFAULT_METHOD": st.sampled_from(["template", "debootstrap"]),
    "STORAGE": st.sampled_from(["dir", "btrfs"]),
    "DEFAULT_DISTRO": st.sampled_from(["bookworm", "trixie"]),
    "FAKE_OS": st.just("2.6.8"),
    "LVM_VG": st.just("vg0"),
    "LVM_FS": st.sampled_from(["ext4", "xfs"]),
    "FIREWALL_BACKEND": st.sampled_from(["nftables", "iptables-restore", "iptc"]),
    "NETWORK": st.sampled_from(["routed", "none"]),
    "SMTP_PORT": st.integers(1, 65535).map(str),
    "MAIL_FROM": st.just("vs-tools@example.org"),
    "MONITOR_POOLING": st.integers(1, 3600).map(str),
    "MONITOR_REPEAT": VALUES["count"],
    "STOP_TIMEOUT": st.integers(1, 600).map(str),
    "SSH_TIMEOUT": st.integers(1, 600).map(str),
    "SSH_CALL_TIMEOUT": st.integers(1, 86400).map(str),
    "PKG_TIMEOUT": st.integers(1, 86400).map(str),
    "PKG_PROXY_ADDRESS": st.sampled_from(["169.254.80.1", "169.254.0.9"]),
    "PKG_CACHE": st.sampled_from(["none", "apt-cacher-ng"]),
    "LOADAVG_1_THRESHOLD": st.sampled_from(["2", "1.5", "0.25"]),
    "LOADAVG_5_THRESHOLD": st.sampled_from(["2", "1.5"]),
    "LOADAVG_15_THRESHOLD": st.sampled_from(["2", "10.75"]),
    "BACKUP_KEEP_LAST": st.integers(0, 100).map(str),
    "BACKUP_KEEP_DAILY": st.integers(0, 100).map(str),
    "BACKUP_KEEP_WEEKLY": st.integers(0, 100).map(str),
    "BACKUP_KEEP_MONTHLY": st.integers(0, 100).map(str),
    "BACKUP_KEEP_YEARLY": st.integers(0, 100).map(str),
    "BACKUP_MAX_AGE": st.integers(1, 1000).map(str),
    "BACKUP_MASTER": VALUES["host"],
    "BACKUP_MAILTO": st.sampled_from(["root", "admin@example.org,ops@example.org"]),
    "BACKUP_PASSPHRASE_FILE": VALUES["path"],
}


def _value_for(key: str) -> st.SearchStrategy[str]:
    if key in KV_VALUES:
        return KV_VALUES[key]
    if key.endswith(("_LIMIT", "_SIZE")) and "CPU" not in key and "PROC" not in key:
        return VALUES["mb"]
    if "CPU" in key:
        return VALUES["ratio"]
    if key.endswith(("PROC_LIMIT", "_START", "_KEEP")):
        return VALUES["count"]
    if key.endswith("THRESHOLD") or key.endswith("HYSTERESIS"):
        return VALUES["pct"]
    if key.endswith(("_DIR", "_SOCKET", "_KEY", "_KEYS", "_HOSTS", "TEMPLATE", "INIT")):
        return VALUES["path"]
    return VALUES["bool"]


@st.composite
def kv_texts(draw: st.DrawFn, cls: type[KeyValueFile]) -> str:
    required = (
        {
            "NAME",
            "CONTEXT",
            "IP",
            "RSS_LIMIT",
            "DISK_LIMIT",
            "TMPFS_LIMIT",
            "PROC_LIMIT",
            "CPU_LIMIT",
        }
        if cls is GuestConf
        else set()
    )
    lines = []
    context = 0
    for spec in cls.SCHEMA:
        if spec.key in required or draw(st.booleans()):
            value = draw(_value_for(spec.key))
            if spec.key == "CONTEXT":
                context = int(value.strip('"'))
            if spec.key == "USERNS" and context > MAX_USERNS_CONTEXT:
                value = "no"  # a valid file: USERNS=yes needs room for its id map
            quote = draw(st.sampled_from(["", '"'])) if " " not in value else '"'
            if "\\" in value or "$" in value:
                quote = "'"
            lines.append(f"{spec.key}={quote}{value}{quote}")
    return "\n".join(draw(st.permutations(lines))) + "\n"


KV_CLASSES = [CreateConf, MonitorConf, GuestConf, Settings]


@FUZZ
@given(data=st.data(), cls=st.sampled_from(KV_CLASSES))
def test_key_value_round_trip(data: st.DataObject, cls: type[KeyValueFile]) -> None:
    text = data.draw(kv_texts(cls))
    model = cls.parse("k", text)
    rendered = model.render(header="written by a test")
    again = cls.parse("k", rendered)
    assert again == model
    assert again.render(header="written by a test") == rendered
