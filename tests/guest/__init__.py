"""Tests of vstools.guest."""
