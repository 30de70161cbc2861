#!/bin/sh
# Install, from Debian, those of the packages named that are not installed yet: a second run
# costs one dpkg query per package and nothing else. Used by the Makefile's targets.
set -e
missing=""
for p in "$@"; do
	dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' ||
		missing="$missing $p"
done
[ -n "$missing" ] || exit 0
echo "+ apt-get install$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086 # one word per package
apt-get install -y -qq --no-install-recommends $missing >/dev/null
# vs-pkg starts its own proxy for each run, bound to one address and one guest: the system-wide
# daemons these packages start on installation (tinyproxy on 8888, apt-cacher-ng on 3142, on
# every interface) are not wanted, so those installed here are stopped and disabled.
for p in $missing; do
	case "$p" in tinyproxy | apt-cacher-ng)
		if [ -d /run/systemd/system ]; then systemctl disable --now -q "$p" || true; fi ;;
	esac
done
