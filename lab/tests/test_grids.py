"""The lab's grid files (``lab/grids/``) load, and their experiment names are their own."""

from fsds.pipeline.grid import load_grid
from tests.conftest import REPO


def test_lab_grids_load_and_share_no_experiment_name_with_any_grid():
    lab = [load_grid(path, REPO / "params.yaml") for path in sorted((REPO / "lab" / "grids").rglob("*.yaml"))]
    product = [load_grid(path, REPO / "params.yaml") for path in sorted((REPO / "grids").rglob("*.yaml"))]
    assert len(lab) >= 7
    # experiment names and archived cells are <name>-k<shot>-s<seed>: distinct names keep both apart
    # (lab/grids/pretrained/*.yaml share one archive folder)
    names = [g.name for g in lab + product]
    assert len(set(names)) == len(names)
