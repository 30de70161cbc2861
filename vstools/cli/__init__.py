"""The ``vs-*`` commands: one module per command, its argument parser beside its handler."""
