"""Tests of vstools.host."""
