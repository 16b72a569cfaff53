"""The threshold calibrated on held-out normal images (fsds.evaluation.threshold)."""

import numpy as np
import pytest

from fsds.evaluation.threshold import calibrate_threshold, level_threshold


def _normals() -> np.ndarray:
    """1,000 pixels of two normal images: 990 at level 0, 5 at 100, 3 at 200, 2 at 255."""
    levels = np.r_[np.zeros(990), np.full(5, 100), np.full(3, 200), np.full(2, 255)].astype(np.uint8)
    return np.random.default_rng(0).permutation(levels).reshape(2, 20, 25)


def test_the_lowest_threshold_under_the_target_rate():
    probs = _normals()
    found = calibrate_threshold(probs, max_fpr=0.005)  # levels 1-100 leave 10 pixels (1%), 101-200 leave 5
    assert found.threshold == pytest.approx(100.5 / 255) and found.fpr == pytest.approx(0.005) and found.reached
    assert found.images == 2
    flagged = np.mean([(image >= 101).any() for image in probs])  # levels 200 and 255 sit in one or both images
    assert found.image_fpr == pytest.approx(flagged) and 0 < found.image_fpr <= 1
    assert calibrate_threshold(probs, max_fpr=0.0049).threshold == pytest.approx(200.5 / 255)  # 3 + 2 pixels
    assert calibrate_threshold(probs, max_fpr=0.02).threshold == pytest.approx(0.5 / 255)  # level 1: 10 pixels


@pytest.mark.parametrize("max_fpr", [0.02, 0.005, 0.003, 0.0021])
def test_applied_to_the_probabilities_it_gives_the_rate_it_reports(max_fpr):
    probs = _normals()
    found = calibrate_threshold(probs, max_fpr)
    alarms = (probs.astype(np.float32) / 255 >= found.threshold).mean()
    assert alarms == pytest.approx(found.fpr) and alarms <= max_fpr
    # and the next lower level would break the target
    level = round(found.threshold * 255 + 0.5)
    assert level == 1 or (probs >= level - 1).mean() > max_fpr


def test_an_unreachable_rate_gives_the_highest_level_and_says_so():
    found = calibrate_threshold(_normals(), max_fpr=0.001)  # 2 pixels (0.2%) sit at level 255
    assert not found.reached and found.threshold == pytest.approx(level_threshold(255)) and found.fpr == pytest.approx(0.002)
    assert 0 < found.threshold < 1  # still a valid threshold for `fsds predict`


def test_a_silent_model_gets_the_lowest_level():
    found = calibrate_threshold(np.zeros((3, 8, 8), dtype=np.uint8), max_fpr=0.001)
    assert found.reached and found.fpr == 0.0 and found.threshold == pytest.approx(0.5 / 255) and found.image_fpr == 0.0


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="uint8"):
        calibrate_threshold(np.zeros((1, 4, 4), dtype=np.float32), 0.01)
    with pytest.raises(ValueError, match="at least one normal image"):
        calibrate_threshold(np.zeros((0, 4, 4), dtype=np.uint8), 0.01)
    with pytest.raises(ValueError, match="max_fpr"):
        calibrate_threshold(np.zeros((1, 4, 4), dtype=np.uint8), 0.0)


def test_the_image_decision_is_the_kth_largest_normal_area_for_its_rate():
    """k = floor(fpr (n + 1)): 19 normals at 5% -> k 1, the largest area (a new good part exceeds the
    largest of 19 with chance 1/20); 39 at 5% -> k 2, the second largest; 8 at 5% -> too few (k 0):
    the largest, not reached."""
    from fsds.evaluation.threshold import image_threshold

    areas = np.linspace(0.0, 0.018, 19)[::-1]  # 0.018, 0.017, ..., 0
    assert image_threshold(areas, 0.05) == (pytest.approx(0.018), True)
    assert image_threshold(np.linspace(0.0, 0.038, 39), 0.05) == (pytest.approx(0.037), True)
    assert image_threshold(areas[:8], 0.05) == (pytest.approx(0.018), False)
    assert image_threshold(np.zeros(30), 0.05) == (0.0, True)  # good parts with no defect pixel: any pixel flags
    # the promise, simulated: good parts drawn like the calibration ones are flagged at about k / (n + 1)
    rng = np.random.default_rng(0)
    flagged = []
    for _ in range(2000):
        calibration, new = rng.exponential(size=19), rng.exponential()
        flagged.append(new > image_threshold(calibration, 0.05)[0])
    assert np.mean(flagged) == pytest.approx(0.05, abs=0.015)
    with pytest.raises(ValueError, match="max_image_fpr"):
        image_threshold(areas, 0.0)


def test_calibration_picks_the_image_decision_at_its_pixel_threshold():
    """Twenty normal maps, one with a bright blob of 4 pixels (6.25% of 64), the others clean: at 5%
    (k 1) the decision's min_area is the blob's area, so none of them is flagged by area > min_area."""
    probs = np.zeros((20, 8, 8), dtype=np.uint8)
    probs[3, :2, :2] = 255
    found = calibrate_threshold(probs, max_fpr=0.01, max_image_fpr=0.05)
    assert found.threshold == pytest.approx(0.5 / 255)  # 4 of 1280 pixels (0.3%) at level 1 or above
    assert found.min_area == pytest.approx(4 / 64) and found.image_reached and found.max_image_fpr == 0.05
    assert calibrate_threshold(probs, max_fpr=0.01).min_area == 0.0  # not asked: any pixel, as before
