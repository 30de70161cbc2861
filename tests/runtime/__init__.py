"""Tests of vstools.runtime."""
