"""Host-driven package management (vs-pkg, DESIGN §8): the guest's own package manager run inside
the guest, reaching only its mirrors through a per-run host proxy and one temporary firewall
element."""
