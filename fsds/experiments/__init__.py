"""Driving many runs: experiment grids through DVC's queue, the fast-path accuracy check, the
speed benchmark and the timing estimate. The top layer: imports anything, imported by nothing
but ``stages/grid.py``.
"""
