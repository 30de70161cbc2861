"""Tests of vstools.monitor."""
