"""The pool (DESIGN §10): the master's side. ``slaves`` reaches the slaves of slaves.conf over
SSH (one bounded fan-out, an unreachable slave reported and never blocking the others),
``inventory`` is the master's SQLite cache of hosts and guests and the journal of its
operations, ``scan`` refreshes it (vs-scan), ``placement`` chooses a slave, ``transfer`` copies
guests between hosts (rsync, btrfs send/receive), ``ops`` are vs-get, vs-put and vs-remove as
resumable state machines."""
