"""The measurement lab: the tools that measured this project's choices, and their findings.

Speed benchmarks (``bench``), training-time estimates (``timing``), training sweeps (``sweep``),
reports across several grids (``compare``) and the fast-path accuracy check (``accuracy``), with
the grid files they ran (``lab/grids/``), the reports they wrote (``lab/findings/``) and the variants
and profiles beyond params.yaml that they still measure with (``lab/variants.yaml``). Run them
from a clone of the repository, e.g. ``python -m lab.bench``; they are not installed with the
package, and ``fsds`` never imports them (``tests/test_layout.py`` checks it).
"""
