"""Benchmark (issue 12): backups of a guest-sized tree with borg (what vs-backup runs on a
slave), beside ``tar --zstd`` of the same tree and ``rsync --link-dest`` generations, and the
repository's size after 5 generations of 3 guests from the same template beside the sum of
their sizes. Run as root:
    .venv/bin/python -m bench.bench_backup [--mb 150] [--files 15000]

The tree: --files files totalling about --mb MB, half text-like (compressible), half random;
a second generation changes 1% of the files. borg runs with vs-backup's options (zstd,3,
--numeric-ids, an encrypted repokey-blake2 repository) on local paths, so the figures are
borg's work without the network. Prints figures; asserts nothing about time."""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from vstools.backup.borg import borg_env

PREFIX = f"vstbench{os.getpid()}"


def make_tree(root: Path, mb: int, files: int, seed: int) -> None:
    """``files`` files of about ``mb`` MB in all, in directories of 100."""
    rng = random.Random(seed)
    size = mb * (1 << 20) // files
    words = [bytes(rng.choice(b"abcdefghij klmnop\n") for _ in range(64)) for _ in range(256)]
    for index in range(files):
        directory = root / f"d{index // 100:03d}"
        directory.mkdir(parents=True, exist_ok=True)
        if index % 2:
            data = os.urandom(size)
        else:
            data = b"".join(rng.choice(words) for _ in range(size // 64 + 1))[:size]
        (directory / f"f{index:05d}").write_bytes(data)


def touch_one_percent(root: Path, seed: int) -> None:
    """Rewrite 1% of the files with new content."""
    rng = random.Random(seed)
    paths = sorted(root.rglob("f*"))
    for path in rng.sample(paths, max(1, len(paths) // 100)):
        path.write_bytes(os.urandom(path.stat().st_size))


def du_mb(*paths: Path) -> float:
    """Disk used by ``paths`` together (an inode hard-linked between them counted once)."""
    out = subprocess.run(["du", "-sc", "--block-size=1", *map(str, paths)], capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    return int(out.splitlines()[-1].split()[0]) / (1 << 20)


def timed(action: Callable[[], object]) -> float:
    subprocess.run(["sync"], check=True)
    started = time.monotonic()
    action()
    return time.monotonic() - started


def borg(env: dict[str, str], *argv: str, cwd: Path | None = None) -> None:
    subprocess.run(["borg", *argv], env=env, cwd=cwd, check=True, capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=int, default=150)
    parser.add_argument("--files", type=int, default=15000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix=PREFIX) as top_text:
        top = Path(top_text)
        env = borg_env(top / "borgbase", "bench")
        repo = top / "repo"
        borg(env, "init", "--encryption=repokey-blake2", str(repo))
        tree = top / "guest"
        make_tree(tree, args.mb, args.files, 1)
        print(f"tree: {du_mb(tree):.0f} MB, {args.files} files")
        create = ("create", "--numeric-ids", "--compression", "zstd,3")
        first = timed(lambda: borg(env, *create, f"{repo}::g.1", ".", cwd=tree))
        touch_one_percent(tree, 2)
        second = timed(lambda: borg(env, *create, f"{repo}::g.2", ".", cwd=tree))
        out = top / "restore"
        out.mkdir()
        restore = timed(lambda: borg(env, "extract", "--numeric-ids", "--sparse", f"{repo}::g.2",
                                     cwd=out))  # fmt: skip
        print(f"borg: first {first:.2f} s, second (1% changed) {second:.2f} s,"
              f" restore {restore:.2f} s, repository {du_mb(repo):.0f} MB")  # fmt: skip
        tar = timed(lambda: subprocess.run(["tar", "--zstd", "--numeric-owner", "-cf",
                                            str(top / "g.tar.zst"), "-C", str(tree), "."],
                                           check=True))  # fmt: skip
        print(f"tar --zstd: {tar:.2f} s, {du_mb(top / 'g.tar.zst'):.0f} MB (each generation)")
        gen1, gen2 = top / "rsync.1", top / "rsync.2"
        rsync1 = timed(lambda: subprocess.run(["rsync", "-aHAXS", "--numeric-ids", f"{tree}/",
                                               f"{gen1}/"], check=True))  # fmt: skip
        rsync2 = timed(lambda: subprocess.run(["rsync", "-aHAXS", "--numeric-ids",
                                               f"--link-dest={gen1}", f"{tree}/", f"{gen2}/"],
                                              check=True))  # fmt: skip
        print(f"rsync --link-dest: first {rsync1:.2f} s, second {rsync2:.2f} s,"
              f" both generations {du_mb(gen1, gen2):.0f} MB")  # fmt: skip
        shutil.rmtree(out)
        # 3 guests from one template, 5 generations each, 1% changed between generations.
        repo3 = top / "repo3"
        borg(env, "init", "--encryption=repokey-blake2", str(repo3))
        guests = []
        for index in range(3):
            guest = top / f"guest{index}"
            shutil.copytree(tree, guest, symlinks=True)
            guests.append(guest)
        for generation in range(5):
            for index, guest in enumerate(guests):
                touch_one_percent(guest, 10 * generation + index)
                borg(env, *create, f"{repo3}::g{index}.{generation}", ".", cwd=guest)
        total = sum(du_mb(g) for g in guests) * 5
        print(f"3 guests x 5 generations: repository {du_mb(repo3):.0f} MB, their sizes summed"
              f" {total:.0f} MB")  # fmt: skip


if __name__ == "__main__":
    main()
