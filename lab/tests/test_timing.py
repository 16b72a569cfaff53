"""lab.timing: a few training steps of a method, timed."""

from lab.timing import step_seconds
from tests.params import make_config


def test_timing_measures_a_step_of_any_method():
    cfg = make_config({"profiles": {"t": {"image_size": 64, "iterations": 3, "lr": 1e-4}}, "profile": "t",
                        "variants": {"UNetPP": {"arch": "unetplusplus", "nbr": "none", "cap": "plain"}}, "mlflow": {"enabled": False}})
    seconds = step_seconds(cfg, "UNetPP", 5, 3)
    assert 0 < seconds < 60
