"""Tests of vstools.storage."""
