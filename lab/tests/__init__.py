"""Tests of the measurement lab (run by `pytest` with the rest)."""
