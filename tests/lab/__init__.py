"""The VM lab: real Debian kernels under qemu (cgroup v2, 802.1Q, device-mapper)."""
