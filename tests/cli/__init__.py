"""Tests of the command-line frame and the commands as a whole (vstools.cli)."""
