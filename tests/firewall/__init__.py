"""Tests of vstools.firewall."""
