"""A running guest: ``state`` is what other processes see of it (the lock, state.json),
``supervisor`` the one process per running guest that starts, watches and stops it,
``sandbox`` what its first process (and the vs-exec helper) does to become the guest, and
``enter`` running a command inside it (vs-exec, vs-enter, and vs-pkg to come). Needs the
host adapters only."""
