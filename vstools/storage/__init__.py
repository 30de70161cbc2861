"""Where a guest's root filesystem lives (``STORAGE``): one interface in ``base`` (with the
``dir`` backend and the helpers every backend shares: ROOT_DIR kept 0700, the fd-based disk
walk), ``btrfs`` and ``lvm`` backends, and ``select`` to pick the one a guest uses. Each builds,
clones, mounts, limits, measures and snapshots a root as steps with undo."""
