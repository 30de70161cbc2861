"""Tests of the configuration parsers (vstools.config)."""
