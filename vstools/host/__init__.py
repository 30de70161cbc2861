"""The host adapters: everything that touches the host itself, each way out through one
module. ``run`` starts every process, ``fsutil`` writes the host's own files and takes locks,
``journal`` is the syslog journal, ``syscalls`` the ctypes wrappers, ``rootfs`` the one door
into a guest's files, ``netlink`` the one door to pyroute2, ``cgroup`` (with ``cgrouplayout``)
the one door to cgroup files, ``namespaces`` the guests' user namespaces, ``mail`` the alert
spool and SMTP, ``hostconfig`` the host's loaded configuration. Nothing here knows guests'
life cycles; everything above uses these."""
