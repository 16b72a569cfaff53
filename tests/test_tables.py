"""Paper-format tables: mean (std) over seeds, the paper's column beside ours on MVTec AD."""

import math

import numpy as np
import pandas as pd

from fsds.config import Variant
from fsds.evaluation import paper
from fsds.evaluation.tables import (
    ablation_table,
    category_means,
    detection_table,
    mean_std,
    paper_tables,
    per_category_table,
)

# params.yaml's metadata: which paper method each reproduces (its table and published numbers), the label
VARIANTS = {
    "B": Variant("none", "none", paper="B", label="B"),
    "B_NBR": Variant("cosine", "none", paper="B_NBR", label="B+NBR"),
    "B_NBR_CaP": Variant("cosine", "weighted", paper="B_NBR_CaP", label="ours"),
    "UNet": Variant("none", "plain", arch="unet", paper="UNet", label="U-Net"),
    "AlbuNet": Variant("none", "plain", arch="albunet34", paper="AlbuNet", label="B (AlbuNet)"),
}
LITE = "EfficientNet-Lite0 U-Net, ImageNet weights"


def _frame(methods, shots=(1,), seeds=(0, 1, 2), categories=("bottle", "cable")):
    rng = np.random.default_rng(0)
    rows = [
        {"method": m, "shot": k, "seed": s, "category": c, "iou": rng.random(), "dice": rng.random(),
         "image_acc": rng.random(), "image_auroc": rng.random(), "pixel_auroc": rng.random()}
        for m in methods for k in shots for s in seeds for c in categories
    ]
    return pd.DataFrame(rows)


def test_mean_std_is_the_sample_std_and_skips_nan():
    assert mean_std([0.1, 0.2, 0.3]) == "0.2000 (0.1000)"
    assert mean_std([0.5, math.nan]) == "0.5000"
    assert mean_std([]) == "n/a"


def test_means_are_over_categories_per_seed_then_over_seeds():
    frame = _frame(["UNet", "B_NBR_CaP"])
    table = per_category_table(frame, "iou", 1, VARIANTS)
    per_seed = frame[frame["method"] == "UNet"].groupby("seed")["iou"].mean()
    assert f"| **Mean** | {per_seed.mean():.4f} ({per_seed.std(ddof=1):.4f}) |" in table
    bottle = frame[(frame["method"] == "UNet") & (frame["category"] == "bottle")]["iou"]
    assert f"| bottle | {bottle.mean():.4f} ({bottle.std(ddof=1):.4f}) |" in table
    assert table.splitlines()[0] == "| category | U-Net | ours |"  # the paper's column order


def test_the_papers_numbers_stand_beside_ours_on_mvtec():
    frame = _frame(["UNet", "B_NBR_CaP"], shots=(1, 5))
    table = per_category_table(frame, "dice", 5, VARIANTS, paper=True)
    assert table.splitlines()[0] == "| category | U-Net | U-Net (paper) | ours | ours (paper) |"
    unet, std = paper.PER_CATEGORY["dice"][5]["UNet"]["bottle"]
    assert f"| {unet:.4f} ({std:.4f}) |" in table.splitlines()[2]
    assert f"| {paper.PRINTED_MEANS['dice'][5]['B_NBR_CaP']:.4f} |" in table.splitlines()[-1]
    detection = detection_table(frame, VARIANTS, paper=True)
    assert f"{paper.DETECTION[1]['UNet']['acc']:.4f}" in detection and "5-shot AUC (paper)" in detection
    ablation = ablation_table(_frame(["B", "B_NBR", "B_NBR_CaP"], shots=(1, 5)), "V", VARIANTS, paper=True)
    assert [line.split(" | ")[0] for line in ablation.splitlines()[2:]] == ["| B", "| B+NBR", "| ours"]
    assert f"{paper.ABLATIONS['V']['B_NBR'][5]['dice']:.4f}" in ablation


def test_only_the_tables_the_methods_fill_are_written():
    text = paper_tables(_frame(["B", "B_NBR_CaP"]), VARIANTS)
    assert "## Table V" in text and "Table II" not in text and "Table VI" not in text
    text = paper_tables(_frame(["AlbuNet", "B_NBR_CaP"]), VARIANTS, parameters={"AlbuNet": 24436369})
    assert "## Table II: mean IoU, 1-shot" in text and "## Table IV" in text and "| B (AlbuNet) | 24,436,369 |" in text


def test_category_means_skip_a_category_without_defects():
    frame = _frame(["B"], seeds=(0,))
    frame.loc[frame["category"] == "cable", "iou"] = math.nan
    assert category_means(frame)["iou"].iloc[0] == frame.loc[frame["category"] == "bottle", "iou"].iloc[0]


def test_a_methods_table_comes_from_its_metadata_not_its_id():
    """Renamed variants land where their ``paper`` and ``family`` say, with the published numbers of
    their ``paper`` method beside them; an id that looks like a paper method but says nothing stays out."""
    variants = {
        "L0_B": Variant("none", "none", arch="lite0_unet", paper="B", family=LITE, label="B (Lite0)"),
        "Lite_Ours": Variant("cosine", "weighted", arch="lite0_unet", paper="B_NBR_CaP", family=LITE, label="ours (Lite0)"),
        "B_NBR": Variant("cosine", "none"),  # beyond the paper: no `paper`, whatever its id says
        "B": Variant("none", "none", paper="B", label="B"),
        "Mine": Variant("cosine", "weighted", paper="B_NBR_CaP", label="ours, renamed"),
    }
    frame = _frame(["Lite_Ours", "L0_B", "B_NBR", "B", "Mine", "Unlisted"], shots=(1, 5))
    lite = ablation_table(frame, "V", variants, paper=True, family=LITE)
    rows = [line.split(" | ")[0] for line in lite.splitlines()[2:]]
    assert rows == ["| B (Lite0)", "| ours (Lite0)"]  # in the paper's row order, not the frame's
    ours = [line for line in lite.splitlines() if line.startswith("| ours (Lite0)")][0]
    assert f"{paper.ABLATIONS['V']['B_NBR_CaP'][5]['iou']:.4f}" in ours  # the paper's row of the method it reproduces
    base = ablation_table(frame, "V", variants)
    assert [line.split(" | ")[0] for line in base.splitlines()[2:]] == ["| B", "| ours, renamed"]

    text = paper_tables(frame, variants, paper=True)
    assert f"## Table V: the proposed regularizations ({LITE})" in text
    assert "## Table V: the proposed regularizations\n" in text  # the paper's own networks: B and Mine
    # Tables II-IV hold the paper's own networks only, under their paper method
    assert "## Table II: mean IoU, 1-shot" not in text  # one network (Mine) is no comparison
    networks = dict(VARIANTS, Mine=variants["Mine"], Lite_Ours=variants["Lite_Ours"])
    table = per_category_table(_frame(["UNet", "Mine", "Lite_Ours"], shots=(5,)), "iou", 5, networks, paper=True)
    assert table.splitlines()[0] == "| category | U-Net | U-Net (paper) | ours, renamed | ours, renamed (paper) |"
    assert f"| {paper.PRINTED_MEANS['iou'][5]['B_NBR_CaP']:.4f} |" in table.splitlines()[-1]


def test_renaming_a_variant_keeps_it_in_its_ablation_table():
    """The same metadata under another id (L0_B_NBR_CaP -> Lite_Ours) fills the same table."""
    lite = {"L0_B": Variant("none", "none", arch="lite0_unet", paper="B", family=LITE),
            "L0_B_NBR": Variant("cosine", "none", arch="lite0_unet", paper="B_NBR", family=LITE)}
    ours = Variant("cosine", "weighted", arch="lite0_unet", paper="B_NBR_CaP", family=LITE, label="ours (Lite0)")
    tables = {}
    for name in ("L0_B_NBR_CaP", "Lite_Ours"):
        variants = {**lite, name: ours}
        frame = _frame(["L0_B", "L0_B_NBR", name])
        tables[name] = (ablation_table(frame, "V", variants, family=LITE), paper_tables(frame, variants))
    assert tables["Lite_Ours"] == tables["L0_B_NBR_CaP"]
    table, text = tables["Lite_Ours"]
    assert [line.split(" | ")[0] for line in table.splitlines()[2:]] == ["| L0+B", "| L0+B+NBR", "| ours (Lite0)"]
    assert f"## Table V: the proposed regularizations ({LITE})" in text and "| ours (Lite0) |" in text
