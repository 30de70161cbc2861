#!/usr/bin/env bash
# The main job of the README (`make demo`): in a scratch tree (nothing else on the host is
# touched), install the sample configuration, create a guest from a busybox template, start it,
# show vs-control, vs-limit, vs-stats and a process list from vs-exec, change its limits hot,
# stop it and remove it; then show how a broken configuration is rejected.
set -euo pipefail

scratch=$(mktemp -d /tmp/vst-demo.XXXXXX)
export VS_ETC_DIR=$scratch/etc VS_GUESTS_CONF_DIR=$scratch/vservers VS_ROOT_DIR=$scratch/root \
       VS_STATE_DIR=$scratch/state VS_RUN_DIR=$scratch/run VS_NO_SYSTEMD=1
cgroup_parent="vst-demo-$$"
cleanup() {
    # Stop the guest if the demo was interrupted, then remove the scratch tree and cgroups.
    vs-control --name web --stop >/dev/null 2>&1 || true
    for c in /sys/fs/cgroup/*/"$cgroup_parent"; do rmdir "$c" 2>/dev/null || true; done
    rm -rf "$scratch"
}
trap cleanup EXIT

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() { printf '$ %s\n' "$*"; "$@"; }

say "Install the sample configuration (vs-setup) into $VS_ETC_DIR"
show vs-setup --etc-dir "$VS_ETC_DIR" --unit-dir "$scratch/units" | head -n 4
echo "..."
printf 'CGROUP_PARENT=%s\nSTOP_TIMEOUT=10\n' "$cgroup_parent" >> "$VS_ETC_DIR/vs-tools.conf"

say "A template: busybox from the host's busybox-static, nothing downloaded"
show vs-fonctions busybox_template "$scratch/busybox.tar.gz"
printf 'DEFAULT_TEMPLATE=%s\n' "$scratch/busybox.tar.gz" >> "$VS_ETC_DIR/create.conf"

say "vs-create: a name and an address are enough"
show vs-create --name web --interface 198.51.100.10 --rss 64 --proc 40 --cpu 1/4

say "vs-check: silent and exit 0 when everything is valid (like sshd -t)"
show vs-check && echo "(exit status 0)"

say "vs-control: start it (new mount, PID, UTS, IPC and network namespaces; cgroup limits)"
show vs-control --name web --start
show vs-control --all

say "vs-exec: the guest sees only its own processes; its root has no host capabilities"
show vs-exec web -- ps
show vs-exec web -- sh -c 'grep -E "^Cap(Eff|Bnd)|^Seccomp:" /proc/self/status; hostname'

say "vs-limit: used/limit for rss, disk, tmpfs (MB), proc, cpu; then changed hot"
show vs-limit --name web
show vs-limit --name web --rss 48 --tmpfs 8 --proc 30
echo "memory.limit_in_bytes in the guest's cgroup: $(cat /sys/fs/cgroup/memory/$cgroup_parent/web/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/$cgroup_parent/web/memory.max)"

say "A process past the memory limit is killed by the kernel"
status=0
show vs-exec web -- sh -c 'x=a; while true; do x=$x$x; done' || status=$?
echo "(exit status $status: 128 + SIGKILL)"

say "vs-stats: the guest's figures, from its cgroup and /proc"
show vs-stats --name web

say "Stop it and remove it"
show vs-control --name web --stop
rm -rf "$VS_ROOT_DIR/web" "$VS_GUESTS_CONF_DIR/web"
show vs-control --all

say "One broken line in each file: every problem at its path:line:col, each file rejected whole"
printf '7,198.18.0.5/15,198.18.0.1\n' >> "$VS_ETC_DIR/networks.conf"          # host bits set
printf 'dney from 0/0 to tcp/23\n' >> "$VS_ETC_DIR/firewall.conf"             # a typo in deny
printf 'allow from 0/0 to tcp/٨٠\n' >> "$VS_ETC_DIR/firewall.conf"             # not ASCII digits
printf 'RSS_THRESHOLD=101\n' >> "$VS_ETC_DIR/monitor.conf"                    # out of range
printf 'vsh-09:bwlimit=10g\n' >> "$VS_ETC_DIR/slaves.conf"                     # bad unit
printf 'x;id:hot\n' >> "$VS_ETC_DIR/backup.conf"                               # not a guest name
printf 'MONITOR_MAILTO=$(touch %s/pwned)\n' "$scratch" >> "$VS_ETC_DIR/monitor.conf"
status=0
show vs-check || status=$?
echo "(exit status $status)"
[ "$status" -eq 1 ]
[ ! -e "$scratch/pwned" ] && echo 'the $(touch ...) in monitor.conf was read as text: nothing ran'
