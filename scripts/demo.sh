#!/usr/bin/env bash
# The main job of the README (`make demo`): in a scratch tree (nothing else on the host is
# touched), install the sample configuration, create a guest from a busybox template, start it,
# show vs-control, vs-limit, vs-stats and a process list from vs-exec, change its limits hot,
# stop it and remove it; then show how a broken configuration is rejected.
set -euo pipefail

# The demo host lives in a network namespace of its own, wired by a veth (its uplink up0) to a
# "LAN" namespace that holds the network's gateway and an admin host: nothing is configured in
# the machine's own network namespace. The script re-runs itself inside the host namespace.
if [ -z "${VST_DEMO_LAN:-}" ]; then
    host_ns="vst-demo-host-$$" lan_ns="vst-demo-lan-$$"
    trap 'ip netns del "$host_ns" 2>/dev/null || true; ip netns del "$lan_ns" 2>/dev/null || true' EXIT
    ip netns add "$host_ns"
    ip netns add "$lan_ns"
    ip -n "$host_ns" link add up0 type veth peer name lan0 netns "$lan_ns"
    ip -n "$host_ns" addr add 198.51.100.2/24 dev up0
    ip -n "$lan_ns" addr add 198.51.100.1/24 dev lan0           # the network's gateway
    ip -n "$lan_ns" addr add 198.51.100.62/32 dev lan0          # the admin host of firewall.conf
    for ns in "$host_ns" "$lan_ns"; do ip -n "$ns" link set lo up; done
    ip -n "$host_ns" link set up0 up
    ip -n "$lan_ns" link set lan0 up
    status=0
    VST_DEMO_LAN=$lan_ns nsenter --net="/run/netns/$host_ns" -- "$0" "$@" || status=$?
    exit "$status"
fi

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
# --munin-dir: a scratch directory that does not exist, so the demo links no Munin plugin.
show vs-setup --etc-dir "$VS_ETC_DIR" --unit-dir "$scratch/units" --munin-dir "$scratch/munin" \
  | head -n 4
echo "..."
printf 'CGROUP_PARENT=%s\nSTOP_TIMEOUT=10\n' "$cgroup_parent" >> "$VS_ETC_DIR/vs-tools.conf"
# This kernel has no 802.1Q module: the demo's network is VLAN 0, on the uplink up0 itself.
printf '0,198.51.100.0/24,198.51.100.1,example.org,198.51.100.53\n' > "$VS_ETC_DIR/networks.conf"
sed -i 's/^DEFAULT_DEVICE=.*/DEFAULT_DEVICE=up0/' "$VS_ETC_DIR/create.conf"

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

say "vs-net: routed on its network, firewall loaded by the host before its link came up"
show vs-net --name web
show vs-exec web -- ip -4 -o addr show dev eth0
show vs-exec web -- ip route
echo "firewall.conf (the sample, the slides' example):"
grep -v '^#' "$VS_GUESTS_CONF_DIR/web/firewall.conf" | sed 's/^/    /'
show vs-exec web -- httpd -p 80 -h /tmp
show vs-exec web -- httpd -p 22 -h /tmp
probe() {  # from the LAN namespace: connect to the guest from a given source address
    nsenter --net="/run/netns/$VST_DEMO_LAN" -- python3 - "$@" <<'PY'
import socket, sys
src, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(); s.settimeout(2); s.bind((src, 0))
try:
    s.connect(("198.51.100.10", port)); print(f"from {src} to web:{port}: open")
except OSError as exc:
    print(f"from {src} to web:{port}: {exc.strerror or exc}")
PY
}
probe 198.51.100.1 80      # allow from 0/0 to tcp/80
probe 198.51.100.62 22     # allow from 203.0.113.0/24,198.51.100.62 to tcp/22
probe 198.51.100.1 22      # anyone else: refused by the host
echo "the guest's chains in the host's table inet vstools:"
nft list chain inet vstools in_web | sed 's/^/    /'

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

say "Root inside is an ordinary uid outside (USERNS=yes, the default for new guests)"
show vs-exec web -- id
init_pid=$(vs-stats --name web | sed -n 's/^init_pid://p')
echo "the guest's init seen from the host: uid $(ps -o uid= -p "$init_pid" | tr -d ' ')"
echo "\$ vs-stats --name web | grep -E '^(context|userns):'"
vs-stats --name web | grep -E '^(context|userns):'

say "Stop it and remove it"
show vs-control --name web --stop
show vs-net --name web
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
