"""Tests of vstools.net."""
