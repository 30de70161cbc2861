#!/usr/bin/env bash
# The main job of the README (`make demo`): install the sample configuration into a scratch
# directory, check it, show vs-fonctions reading it, then break one line in each file and show
# how each is rejected. Nothing outside the scratch directory is touched.
set -euo pipefail

scratch=$(mktemp -d /tmp/vst-demo.XXXXXX)
trap 'rm -rf "$scratch"' EXIT
export VS_ETC_DIR=$scratch/etc VS_GUESTS_CONF_DIR=$scratch/vservers VS_ROOT_DIR=$scratch/root \
       VS_STATE_DIR=$scratch/state VS_RUN_DIR=$scratch/run
mkdir -p "$VS_GUESTS_CONF_DIR"

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() { printf '$ %s\n' "$*"; "$@"; }

say "Install the sample configuration (vs-setup) into $VS_ETC_DIR"
show vs-setup --etc-dir "$VS_ETC_DIR" --unit-dir "$scratch/units"

say "Define a guest the way vs-create will write it"
mkdir -p "$VS_GUESTS_CONF_DIR/web"
cp "$VS_ETC_DIR/guest.conf.sample" "$VS_GUESTS_CONF_DIR/web/guest.conf"
cp "$VS_ETC_DIR/firewall.conf" "$VS_ETC_DIR/monitor.conf" "$VS_GUESTS_CONF_DIR/web/"
sed -i 's/^NAME=.*/NAME=web/' "$VS_GUESTS_CONF_DIR/web/guest.conf"

say "vs-check: silent and exit 0 when everything is valid (like sshd -t)"
show vs-check && echo "(exit status $?)"

say "vs-fonctions: the library from the shell"
show vs-fonctions --list
show vs-fonctions networks
show vs-fonctions network_for 198.51.100.10
show vs-fonctions guests
show vs-fonctions parse "$VS_GUESTS_CONF_DIR/web/firewall.conf"
show vs-fonctions --json parse "$VS_ETC_DIR/slaves.conf"

say "One broken line in each file: every problem at its path:line:col, each file rejected whole"
printf '7,198.18.0.5/15,198.18.0.1\n' >> "$VS_ETC_DIR/networks.conf"        # host bits set
printf 'dney from 0/0 to tcp/23\n' >> "$VS_GUESTS_CONF_DIR/web/firewall.conf" # a typo in deny
printf 'allow from 0/0 to tcp/٨٠\n' >> "$VS_GUESTS_CONF_DIR/web/firewall.conf" # not ASCII digits
printf 'RSS_THRESHOLD=101\n' >> "$VS_GUESTS_CONF_DIR/web/monitor.conf"      # out of range
printf 'vsh-09:bwlimit=10g\n' >> "$VS_ETC_DIR/slaves.conf"                   # bad unit
printf 'x;id:hot\n' >> "$VS_ETC_DIR/backup.conf"                             # not a guest name
printf 'MONITOR_MAILTO=$(touch %s/pwned)\n' "$scratch" >> "$VS_ETC_DIR/monitor.conf"
status=0
show vs-check || status=$?
echo "(exit status $status)"
[ "$status" -eq 1 ]
[ ! -e "$scratch/pwned" ] && echo 'the $(touch ...) in monitor.conf was read as text: nothing ran'

say "The same, for a program (vs-check --json)"
vs-check --json | head -n 12 || true

say "Commands whose work is still to come say so (exit 69), they never fake it"
status=0
show vs-control --all || status=$?
echo "(exit status $status)"
