"""VS-Tools: host isolated Linux guests with namespaces, cgroups, nftables and rsync."""

__version__ = "0.1.0"
