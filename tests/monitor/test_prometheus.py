"""The Prometheus textfile: what it says about running, stopped and unwatched guests, checked
by an exposition-format parser (prometheus_client's) and by `promtool check metrics` (Debian's
prometheus package); then vs-monitor --once writing it for a real running guest, and Debian's
node_exporter scraping it.

promtool and node_exporter come from Debian's packages, downloaded and unpacked (never
installed: installing them starts a Prometheus server and an exporter on the host) into
VS_DEB_CACHE (/var/cache/vs-tools-tests/tools) once."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.deb.system import CACHE
from tests.guests import Host, named_netns, netns_prefix
from vstools.monitor.prometheus import (
    TEXTFILE_NAME,
    escape_label,
    export_textfile,
    render_textfile,
)

BIN = Path(sys.executable).parent
NOW = 1_800_000_000.0
MB = 1 << 20


def _state(host: str, running: bool, time: float, **figures: object) -> dict[str, object]:
    base: dict[str, object] = {
        "time": time,
        "running": running,
        "rss_mb": 12.5,
        "rss_limit_mb": 64,
        "processes": 3,
        "proc_limit": 40,
        "cpu_s": 4.25,
        "rss_hits": 2,
        "oom_kills": 1,
        "proc_hits": 7,
        "disk_mb": 100.0,
        "disk_limit_mb": 0,
        "tmpfs_mb": 0.5,
        "tmpfs_limit_mb": 16,
        "load": [0.5, 0.25, 0.125],
    }
    base.update(figures)
    return {"guest": "?", "host": host, "pooling_s": 60, "figures": base, "alerts": {}}


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the text, parsed as Prometheus does: (name, labels) → value."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in found, f"sample {key} given twice"
            found[key] = sample.value
    return found


def _key(
    name: str, guest: str, host: str = "h1", **more: str
) -> tuple[str, tuple[tuple[str, str], ...]]:
    return (name, tuple(sorted({"guest": guest, "host": host, **more}.items())))


def debian_binary(package: str, path: str) -> Path:
    """``path`` of Debian's ``package``, from the package unpacked once into the cache."""
    target = CACHE / "tools" / package
    binary = target / path.lstrip("/")
    (CACHE / "tools").mkdir(parents=True, exist_ok=True)
    with open(CACHE / "tools" / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not binary.exists():
            with tempfile.TemporaryDirectory(prefix="vst-download-") as scratch:
                subprocess.run(
                    ["apt-get", "download", package], cwd=scratch, check=True, capture_output=True
                )
                [deb] = Path(scratch).glob(f"{package}_*.deb")
                subprocess.run(["dpkg-deb", "-x", str(deb), str(target)], check=True)
    return binary


def _promtool(text: str) -> None:
    """`promtool check metrics`: what Prometheus itself says of the text."""
    promtool = debian_binary("prometheus", "/usr/bin/promtool")
    done = subprocess.run(
        [str(promtool), "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_munin_figure_limit_hit_and_state_labelled_by_guest_and_host() -> None:
    web = _state("h1", True, NOW - 5)
    web["alerts"] = {"rss": {"since": NOW - 50}, "proc-hits": {"since": NOW - 20}}
    guests = {
        "web": web,
        "db": _state("h1", False, NOW - 5),  # stopped
        "old": _state("h1", True, NOW - 3600),  # no monitor for an hour: unknown
    }
    text = render_textfile(guests, "fallback", NOW)
    _promtool(text)
    samples = _samples(text)

    assert samples[_key("vs_guest_memory_bytes", "web")] == 12.5 * MB
    assert samples[_key("vs_guest_memory_limit_bytes", "web")] == 64 * MB
    assert samples[_key("vs_guest_processes", "web")] == 3
    assert samples[_key("vs_guest_processes_limit", "web")] == 40
    assert samples[_key("vs_guest_cpu_seconds_total", "web")] == 4.25
    assert samples[_key("vs_guest_disk_bytes", "web")] == 100 * MB
    assert samples[_key("vs_guest_tmpfs_bytes", "web")] == 0.5 * MB
    assert samples[_key("vs_guest_tmpfs_limit_bytes", "web")] == 16 * MB
    assert samples[_key("vs_guest_load1", "web")] == 0.5
    assert samples[_key("vs_guest_load5", "web")] == 0.25
    assert samples[_key("vs_guest_load15", "web")] == 0.125
    assert samples[_key("vs_guest_memory_limit_hits_total", "web")] == 2
    assert samples[_key("vs_guest_oom_kills_total", "web")] == 1
    assert samples[_key("vs_guest_process_limit_hits_total", "web")] == 7
    assert samples[_key("vs_guest_alert", "web", alert="rss")] == 1
    assert samples[_key("vs_guest_alert", "web", alert="proc-hits")] == 1
    assert _key("vs_guest_disk_limit_bytes", "web") not in samples  # 0: no limit set

    states = {
        (guest, state): samples[_key("vs_guest_state", guest, state=state)]
        for guest in ("web", "db", "old")
        for state in ("running", "stopped", "unknown")
    }
    assert [s for (g, s), v in states.items() if v == 1] == ["running", "stopped", "unknown"]
    # Munin's "U": no figures for a stopped guest or stale ones, but their last check time.
    assert not [
        k
        for k in samples
        if k[0] == "vs_guest_memory_bytes" and k != _key("vs_guest_memory_bytes", "web")
    ]
    assert samples[_key("vs_guest_last_check_timestamp_seconds", "old")] == NOW - 3600


def test_the_host_label_falls_back_and_label_values_are_escaped() -> None:
    state = _state("", True, NOW)
    text = render_textfile({"web": state}, 'odd"host\\', NOW)
    assert 'host="odd\\"host\\\\"' in text
    assert _samples(text)[_key("vs_guest_processes", "web", host='odd"host\\')] == 3
    assert escape_label("a\nb") == "a\\nb"
    assert render_textfile({}, "h", NOW) == ""


def test_export_writes_atomically_only_into_an_existing_directory(tmp_path: Path) -> None:
    figures = tmp_path / "guests"
    figures.mkdir()
    (figures / "web.json").write_text(json.dumps({**_state("h1", True, NOW), "guest": "web"}))
    (figures / "broken.json").write_text("{not json")
    missing = tmp_path / "no-collector"
    assert export_textfile(figures, missing, "h1", NOW) is None
    assert not missing.exists()
    assert export_textfile(figures, None, "h1", NOW) is None

    collector = tmp_path / "collector"
    collector.mkdir()
    written = export_textfile(figures, collector, "h1", NOW)
    assert written == collector / TEXTFILE_NAME
    assert os.listdir(collector) == [TEXTFILE_NAME]  # no temporary file left beside it
    assert written.stat().st_mode & 0o777 == 0o644
    assert _samples(written.read_text())[_key("vs_guest_processes", "web")] == 3


@pytest.mark.privileged
@pytest.mark.e2e
def test_vs_monitor_once_writes_the_textfile_of_a_running_guest(host: Host, tmp_path: Path) -> None:
    collector = tmp_path / "node-exporter"
    collector.mkdir()
    with open(Path(host.env["VS_ETC_DIR"]) / "vs-tools.conf", "a") as conf:
        conf.write(f"PROMETHEUS_TEXTFILE_DIR={collector}\nSYSLOG=no\n")
    host.define("web", "198.51.100.10", rss=64, proc=40)
    host.define("db", "198.51.100.11")
    host.run("vs-control", "--name", "web", "--start")
    done = host.run("vs-monitor", "--all", "--once")
    assert "web:running" in done.stdout, done.stdout + done.stderr

    text = (collector / TEXTFILE_NAME).read_text()
    _promtool(text)
    samples = _samples(text)
    hostname = done.stdout.split(":", 1)[0]
    assert samples[_key("vs_guest_state", "web", hostname, state="running")] == 1
    assert samples[_key("vs_guest_state", "db", hostname, state="stopped")] == 1
    assert samples[_key("vs_guest_memory_limit_bytes", "web", hostname)] == 64 * MB
    assert samples[_key("vs_guest_processes", "web", hostname)] >= 1
    assert _key("vs_guest_processes", "db", hostname) not in samples


@pytest.mark.privileged
def test_node_exporter_scrapes_the_textfile_cleanly(tmp_path: Path, run_prefix: str) -> None:
    """Debian's prometheus-node-exporter, in a network namespace of the test, serves the file
    with its textfile collector and reports no scrape error."""
    exporter = str(debian_binary("prometheus-node-exporter", "/usr/bin/prometheus-node-exporter"))
    collector = tmp_path / "collector"
    collector.mkdir()
    web = _state("h1", True, NOW)
    web["alerts"] = {"rss": {"since": NOW}}
    export_figures = tmp_path / "guests"
    export_figures.mkdir()
    (export_figures / "web.json").write_text(json.dumps({**web, "guest": "web"}))
    assert export_textfile(export_figures, collector, "h1", NOW) is not None
    with named_netns(f"{run_prefix}-prom") as netns:
        subprocess.run([*netns_prefix(netns), "ip", "link", "set", "lo", "up"], check=True)
        server = subprocess.Popen(
            [*netns_prefix(netns), exporter, "--collector.disable-defaults",
             "--collector.textfile", f"--collector.textfile.directory={collector}",
             "--web.listen-address=127.0.0.1:9100"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            scrape = (
                "import time, urllib.request\n"
                "for _ in range(100):\n"
                "    try:\n"
                "        print(urllib.request.urlopen('http://127.0.0.1:9100/metrics').read()"
                ".decode()); break\n"
                "    except OSError: time.sleep(0.1)\n"
            )
            done = subprocess.run(
                [*netns_prefix(netns), sys.executable, "-c", scrape],
                capture_output=True, text=True, check=True, timeout=60,
            )  # fmt: skip
        finally:
            server.terminate()
            _, errors = server.communicate(timeout=20)
    samples = _samples(done.stdout)
    assert samples[("node_textfile_scrape_error", ())] == 0, errors
    assert samples[_key("vs_guest_state", "web", state="running")] == 1
    assert samples[_key("vs_guest_alert", "web", alert="rss")] == 1
    assert samples[_key("vs_guest_memory_limit_bytes", "web")] == 64 * MB


@pytest.mark.privileged
@pytest.mark.e2e
def test_the_daemon_keeps_the_textfile_up_to_date(host: Host, tmp_path: Path) -> None:
    collector = tmp_path / "node-exporter"
    collector.mkdir()
    with open(Path(host.env["VS_ETC_DIR"]) / "vs-tools.conf", "a") as conf:
        conf.write(f"PROMETHEUS_TEXTFILE_DIR={collector}\nSYSLOG=no\n")
    host.define("web", "198.51.100.10")
    (host.guests_dir / "web" / "monitor.conf").write_text("MONITOR_POOLING=1\n")
    textfile = collector / TEXTFILE_NAME
    log = open(tmp_path / "monitor.log", "w")  # noqa: SIM115 - closed with the test
    daemon = subprocess.Popen(
        [str(BIN / "vs-monitor"), "--all", "-v"], env=host.env, stdout=log, stderr=log
    )
    try:

        def state_of_web() -> str | None:
            """The state the textfile gives web, once it has one."""
            try:
                samples = _samples(textfile.read_text())
            except (OSError, ValueError):
                return None
            for (name, labels), value in samples.items():
                if name == "vs_guest_state" and ("guest", "web") in labels and value == 1:
                    return dict(labels)["state"]
            return None

        def wait_for(state: str) -> None:
            for _ in range(900):  # a bound on the wait (the file is rewritten every 10 s)
                if state_of_web() == state:
                    return
                time.sleep(0.1)
            raise AssertionError((tmp_path / "monitor.log").read_text())

        wait_for("stopped")
        host.run("vs-control", "--name", "web", "--start")
        wait_for("running")  # rewritten by the daemon as checks go on
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)
        log.close()
    assert daemon.returncode == 0
    assert sorted(os.listdir(collector)) == [TEXTFILE_NAME]
