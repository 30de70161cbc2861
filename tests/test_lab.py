"""The VM lab (tests/lab.py): the harness itself, then cgroup v2 guest limits tested for real in
the VM (tests/test_lab_inside_cgroup2.py, run there by pytest), then the kernel capabilities
this machine lacks (802.1Q VLANs, device-mapper snapshots) that the network and storage code
will need."""

from __future__ import annotations

import json
import shutil
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import lab

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parent.parent
INNER_TESTS = "tests/test_lab_inside_cgroup2.py"
INNER_TEST_COUNT = 7


@pytest.fixture
def lab_dir(run_prefix: str) -> Iterator[Path]:
    """The run's work directory (its io share); the prefix in its name is in qemu's command
    line, so a qemu left running would show up in the session's leak check."""
    directory = Path(tempfile.mkdtemp(prefix=f"{run_prefix}-lab-"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def test_the_harness_returns_output_and_exit_status(lab_dir: Path) -> None:
    result = lab.run_in_vm(
        "echo out; echo err >&2; cat /run/vs-lab/given; uname -r; id -u\n"
        "grep -c '^overlay / overlay' /proc/mounts; touch /usr/vst-written && echo written\n"
        "exit 7\n",
        work_dir=lab_dir,
        files={"given": b"from the host\n"},
    )
    lines = result.output.splitlines()
    assert result.status == 7, result.output + result.console
    assert lines[:4] == ["out", "err", "from the host", lab.fetch_kernel().release]
    assert lines[4:] == ["0", "1", "written"]  # root, on the overlay, writable
    assert not Path("/usr/vst-written").exists()  # ... and the write stayed in the VM
    with pytest.raises(AssertionError, match="lab script exited 7"):
        result.check()
    print(f"lab boot+run+poweroff: {result.seconds:.1f} s")


def test_a_successful_script_checks_clean_and_modules_load(lab_dir: Path) -> None:
    result = lab.run_in_vm("grep -w ^loop /proc/modules | cut -d' ' -f1", work_dir=lab_dir,
                           modules=["loop"])  # fmt: skip
    assert result.check().output.split() == ["loop"]


def test_a_vm_that_does_not_finish_is_killed(lab_dir: Path) -> None:
    with pytest.raises(lab.LabError, match="did not finish within 8 s"):
        lab.run_in_vm("sleep 600", work_dir=lab_dir, timeout_s=8)


def test_cgroup_v2_guest_limits_in_the_vm(lab_dir: Path) -> None:
    """The inner run must pass every test, skip none, and prove it ran on cgroup v2."""
    result = lab.run_in_vm(
        f"cd {REPO} && exec .venv/bin/python -m pytest {INNER_TESTS} -q -p no:cacheprovider "
        "--junitxml=/run/vs-lab/junit.xml\n",
        work_dir=lab_dir,
        env={"CI": "true", "VS_LAB_REPORT": "/run/vs-lab/report.json"},
        timeout_s=240,
    )
    print(result.output)
    result.check()
    junit = ET.parse(lab_dir / "io" / "junit.xml")  # noqa: S314 - our own pytest wrote it
    suite = junit.getroot().find("testsuite")
    assert suite is not None
    counts = {key: int(suite.get(key, "0")) for key in ("tests", "failures", "errors", "skipped")}
    assert counts == {"tests": INNER_TEST_COUNT, "failures": 0, "errors": 0, "skipped": 0}
    report = json.loads((lab_dir / "io" / "report.json").read_text())
    assert report["version"] == "v2" and report["root"] == "/sys/fs/cgroup"
    assert {"memory", "pids", "cpu"} <= set(report["subtree_control"])
    assert report["kernel"] == lab.fetch_kernel().release
