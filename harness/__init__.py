"""What the tests and the benchmarks both need to set up hosts: a fake host for the monitor
(cgroup counters in a temporary tree), a btrfs file system on a loop device, a scratch host's
directories. Not shipped: the toolkit never imports it."""
