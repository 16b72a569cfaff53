"""Shared fixtures: a small synthetic dataset written once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from fsds.config import parse_config
from fsds.datasets import index_dataset
from fsds.split import k_shot_split
from fsds.synthetic import generate_synthetic

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny_dataset")
    generate_synthetic(root, seed=3, n_train_good=6, n_test_good=3, n_per_defect=4, size=64)
    return root


@pytest.fixture(scope="session")
def tiny_index(tiny_root):
    return index_dataset(tiny_root)


@pytest.fixture(scope="session")
def tiny_split(tiny_index):
    return k_shot_split(tiny_index, shot=1, seed=0)


@pytest.fixture()
def tiny_config():
    return parse_config(
        {
            "shot": 1,
            "seed": 0,
            "train": {"image_size": 64, "iterations": 3, "log_every": 1},
            "variants": {
                "B": {"nbr": "none", "cap": "none"},
                "B_NBR": {"nbr": "cosine", "cap": "none"},
                "B_NBR_CaP": {"nbr": "cosine", "cap": "weighted"},
            },
            "mlflow": {"enabled": False},
        }
    )
