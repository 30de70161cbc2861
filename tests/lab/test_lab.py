"""The VM lab (tests/lab/vm.py): the harness itself, the kernel capabilities this machine lacks
(802.1Q VLANs, device-mapper snapshots), then, in one VM boot, the inner test files that use
them for real (tests/lab/test_inside_*.py, run there by pytest): cgroup v2 guest limits, a guest
on a VLAN, LVM storage and backups."""

from __future__ import annotations

import compileall
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from tests.lab import vm as lab
from tests.lab.vm import LabRun, LabVM

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
INNER_TESTS = (
    "tests/lab/test_inside_cgroup2.py",
    "tests/lab/test_inside_vlan.py",
    "tests/lab/test_inside_lvm.py",
    "tests/lab/test_inside_pool_lvm.py",
)


def test_the_harness_returns_output_and_exit_status(lab_vm: LabVM) -> None:
    result = lab_vm(
        "echo out; echo err >&2; cat /run/vs-lab/given; uname -r; id -u\n"
        "grep -c '^overlay / overlay' /proc/mounts; touch /usr/vst-written && echo written\n"
        "echo result > /run/vs-lab/made\n"
        "exit 7\n",
        files={"given": b"from the host\n"},
    )
    lines = result.output.splitlines()
    assert result.status == 7, result.output + result.console
    assert lines[:4] == ["out", "err", "from the host", lab.fetch_kernel().release]
    assert lines[4:] == ["0", "1", "written"]  # root, on the overlay, writable
    assert not Path("/usr/vst-written").exists()  # ... and the write stayed in the VM
    assert (lab_vm.io() / "made").read_text() == "result\n"  # except what it passes back
    with pytest.raises(AssertionError, match="lab script exited 7"):
        result.check()
    print(f"lab boot+run+poweroff: {result.seconds:.1f} s")


def test_a_successful_script_checks_clean_and_modules_load(lab_vm: LabVM, run_prefix: str) -> None:
    result = lab_vm("grep -w ^loop /proc/modules | cut -d' ' -f1", modules=["loop"])
    assert result.check().output.split() == ["loop"]
    # Modules the kernel asks for on demand load too (dummy: the test machine's code path).
    autoloaded = lab_vm(f"ip link add {run_prefix}d type dummy && grep -wc ^dummy /proc/modules")
    assert autoloaded.check().output.split() == ["1"]
    missing = lab_vm("true", modules=["no_such_module"])
    assert missing.status == 125 and "modprobe no_such_module failed" in missing.output


def test_a_vm_that_does_not_finish_is_killed(lab_vm: LabVM) -> None:
    with pytest.raises(lab.LabError, match="did not finish within 8 s"):
        lab_vm("sleep 600", timeout_s=8)


def check_inner_tests(run: LabRun, tests: tuple[str, ...]) -> None:
    """Wait for a VM run of ``tests`` (``start_inner_tests``): every one of their tests must
    have run and passed (none lost to a collection problem, none skipped)."""
    result = run.wait()
    print(result.output)
    result.check()
    junit = ET.parse(run.io_dir / "junit.xml")  # noqa: S314 - our own pytest wrote it
    suite = junit.getroot().find("testsuite")
    assert suite is not None
    counts = {key: int(suite.get(key, "0")) for key in ("tests", "failures", "errors", "skipped")}
    expected = sum((REPO / test).read_text().count("\ndef test_") for test in tests)
    assert counts == {"tests": expected, "failures": 0, "errors": 0, "skipped": 0}


def start_inner_tests(
    lab_vm: LabVM,
    tests: tuple[str, ...],
    *,
    modules: list[str] | None = None,
    env: dict[str, str] | None = None,
    timeout_s: float = 240,
    nice: int = 0,
) -> LabRun:
    """Boot a VM that runs test files in one pytest session (``check_inner_tests``).

    The VM sees the repository read-only, so each of its Python processes would compile every
    module the host has not imported yet, seconds of emulated CPU each time: the host compiles
    them first (half a second)."""
    for tree in ("vstools", "harness", "tests", "bench"):
        compileall.compile_dir(REPO / tree, quiet=1)
    return lab_vm.start(
        f"cd {REPO} && exec .venv/bin/python -m pytest {' '.join(tests)} -q -p no:cacheprovider "
        "--durations=12 "  # where the VM's time goes, in the outer run's output
        "--junitxml=/run/vs-lab/junit.xml\n",
        modules=modules or [],
        env={"CI": "true", **(env or {})},
        timeout_s=timeout_s,
        nice=nice,
    )


def run_inner_tests(lab_vm: LabVM, tests: tuple[str, ...], **options: Any) -> None:
    """Run test files inside the VM and check them (a run of one's own, while developing)."""
    check_inner_tests(start_inner_tests(lab_vm, tests, **options), tests)


# 802.1Q on the VM's virtio NIC (user-mode: it exists only inside qemu) and a device-mapper
# snapshot of a loop device: the snapshot keeps the old data while its origin is rewritten.
# Every object carries the run prefix and the trap removes it, also on failure.
VLAN_AND_SNAPSHOT = """set -eu
p={prefix}
cleanup() {{
    ip link del "${{p}}v42" 2>/dev/null || true
    for name in snap origin; do dmsetup remove --noudevsync "$p-$name" 2>/dev/null || true; done
    for dev in $(losetup -n -O NAME -j /tmp/$p-origin.img) $(losetup -n -O NAME -j /tmp/$p-cow.img)
    do losetup -d "$dev"; done
    rm -f /tmp/$p-origin.img /tmp/$p-cow.img
}}
trap cleanup EXIT
nic=$(basename "$(dirname "$(ls -d /sys/class/net/*/device | head -n 1)")")
ip link set "$nic" up
ip link add link "$nic" name "${{p}}v42" type vlan id 42
ip address add 198.51.100.2/24 dev "${{p}}v42"
ip link set "${{p}}v42" up
echo "vlan: $(ip -d -o link show "${{p}}v42" | grep -o 'vlan protocol 802.1Q id 42')"

export DM_DISABLE_UDEV=1
truncate -s 16M /tmp/$p-origin.img /tmp/$p-cow.img
origin=$(losetup -f --show /tmp/$p-origin.img)
cow=$(losetup -f --show /tmp/$p-cow.img)
printf before | dd of="$origin" conv=notrunc,fsync status=none
sectors=$(blockdev --getsz "$origin")
dmsetup create --noudevsync "$p-origin" --table "0 $sectors snapshot-origin $origin"
dmsetup create --noudevsync "$p-snap" --table "0 $sectors snapshot $origin $cow N 8"
printf after_ | dd of=/dev/mapper/$p-origin conv=notrunc,fsync status=none
echo "origin: $(head -c 6 /dev/mapper/$p-origin)"
echo "snapshot: $(head -c 6 /dev/mapper/$p-snap)"
echo "targets: $(dmsetup table "$p-snap" | cut -d' ' -f3)"
"""


def test_the_vm_kernel_has_vlans_and_device_mapper_snapshots(
    lab_vm: LabVM, run_prefix: str
) -> None:
    result = lab_vm(
        VLAN_AND_SNAPSHOT.format(prefix=run_prefix),
        modules=["virtio_net", "8021q", "loop", "dm-snapshot"],
        nic=True,
    )
    result.check()
    assert result.output.splitlines() == [
        "vlan: vlan protocol 802.1Q id 42",
        "origin: after_",
        "snapshot: before",
        "targets: snapshot",
    ]


def start_inner_suites(lab: LabVM) -> LabRun:
    # In the background of the rest of the suite (niced), so its timeout allows for sharing
    # the CPUs: the pool on LVM alone took 24 minutes here with the machine loaded.
    return start_inner_tests(
        lab,
        INNER_TESTS,
        modules=["loop", "ext4", "xfs", "dm-snapshot", "8021q"],  # ext4: USERNS=yes guests
        env={"VS_LAB_REPORT": "/run/vs-lab/report.json"},
        timeout_s=3600,
        nice=19,
    )


@lab.early(start_inner_suites)
def test_the_inner_suites_in_one_vm(request: pytest.FixtureRequest, lab_vm: LabVM) -> None:
    """What this machine's kernel cannot run, run for real in one VM boot (one inner pytest
    session shares the template and probes): cgroup v2 guest limits (and the run must prove it
    ran on cgroup v2), a guest routed on an 802.1Q VLAN, and STORAGE=lvm (a volume group on a
    loop device: the volume mounted while the guest runs, its size the disk limit, grown hot,
    snapshots, clones, rollback, backups from snapshots). Every inner test must run and pass,
    none skipped. The VM boots when the session starts and this test runs last
    (``lab.early``): it waits for what the VM reports."""
    run = lab.early_run(request.node, lab_vm)
    check_inner_tests(run, INNER_TESTS)
    report = json.loads((run.io_dir / "report.json").read_text())
    assert report["version"] == "v2" and report["root"] == "/sys/fs/cgroup"
    assert {"memory", "pids", "cpu"} <= set(report["subtree_control"])
    assert report["kernel"] == lab.fetch_kernel().release
