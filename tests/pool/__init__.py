"""Tests of the pool: the master, its slaves over real SSH, the inventory (vstools.pool)."""
