"""Published numbers of Lin et al. 2021, "Few-Shot Defect Segmentation Leveraging Abundant
Normal Training Samples Through Normal Background Regularization and Crop-and-Paste Operation".

Each table is typed in once below, in the paper's row layout, and parsed at import into
plain Python constants:

- ``CATEGORIES``: the 15 MVTec AD categories (folder names), in the paper's order.
- ``METHODS``: the method ids of Tables II-IV, in the paper's column order:
  ``TernausNet11``, ``TernausNet16``, ``UNet``, ``AttentionUNet``, ``UNetPP``,
  ``AlbuNet`` (the paper's baseline "B (AlbuNet)") and ``B_NBR_CaP`` (the paper's method).
- ``PER_CATEGORY[metric][shot][method][category]`` -> ``(mean, std)`` over 5 seeds, or
  ``None`` where the paper prints "-" (toothbrush at 1-shot: no method converged).
  ``metric`` is ``"iou"`` (Table II) or ``"dice"`` (Table III); ``shot`` is 1 or 5.
- ``PRINTED_MEANS[metric][shot][method]`` -> the "Mean" row of Tables II/III as printed.
  Note the paper's own rounding/typos: it does not always equal the mean of its column
  (see tests/test_paper.py for the known discrepancies).
- ``DETECTION[shot][method]`` -> ``{"acc": ..., "auc": ...}``: Table IV (image-level
  anomaly detection), as fractions (78.57% -> 0.7857).
- ``ABLATIONS[table][method][shot]`` -> ``{"iou": ..., "dice": ...}`` for tables
  ``"V"`` (rows ``B``, ``B_NBR``, ``B_NBR_CaP``), ``"VI"`` (``B_NBR_CaP1``: lambda fixed
  to 1, and ``B_NBR_CaP``) and ``"VII"`` (``B_NBReuc_CaP``: Euclidean NBR loss, and
  ``B_NBR_CaP``: cosine).
- ``paper_column(metric, shot, method)`` -> ``{category: (mean, std) | None}``.
- ``dice_against_pooled_identity()``: how many of Tables II/III's Dice values lie below
  2 IoU / (1 + IoU), which tells whether the paper's IoU is pooled or a per-image mean.
"""

from __future__ import annotations

import re
import statistics

CATEGORIES = (
    "carpet", "grid", "leather", "tile", "wood", "bottle", "cable", "capsule",
    "hazelnut", "metal_nut", "pill", "screw", "toothbrush", "transistor", "zipper",
)
METHODS = ("TernausNet11", "TernausNet16", "UNet", "AttentionUNet", "UNetPP", "AlbuNet", "B_NBR_CaP")

# Tables II (IoU) and III (Dice): "mean(std)" per category, columns in METHODS order.
_TABLE_II = """
1-shot
Carpet      0.4445(0.0409)  0.4699(0.0192)  0.4995(0.0035)  0.4479(0.0476)  0.4931(0.0163)  0.3461(0.0757)  0.5854(0.0069)
Grid        0.2787(0.0046)  0.2320(0.0301)  0.2787(0.0208)  0.2211(0.0026)  0.2904(0.0216)  0.2090(0.0408)  0.3364(0.0075)
Leather     0.3987(0.0765)  0.1453(0.0612)  0.3154(0.0103)  0.1880(0.0432)  0.2673(0.0156)  0.4589(0.0057)  0.5578(0.0040)
Tile        0.6873(0.0097)  0.6772(0.0089)  0.7522(0.0100)  0.6761(0.0175)  0.7519(0.0185)  0.7557(0.0217)  0.8377(0.0138)
Wood        0.4803(0.0366)  0.4834(0.0832)  0.5008(0.0267)  0.4274(0.0393)  0.4922(0.0136)  0.4600(0.0304)  0.6004(0.0079)
Bottle      0.2988(0.0033)  0.2867(0.0144)  0.2655(0.0251)  0.2908(0.0253)  0.2815(0.0196)  0.3291(0.0327)  0.6763(0.0152)
Cable       0.2412(0.0164)  0.2338(0.0164)  0.2434(0.0070)  0.2731(0.0145)  0.2375(0.0202)  0.2482(0.0193)  0.3197(0.0048)
Capsule     0.1316(0.0024)  0.1316(0.0024)  0.1101(0.0260)  0.1107(0.0269)  0.2143(0.0088)  0.1346(0.0030)  0.2631(0.0046)
Hazelnut    0.3556(0.0176)  0.3102(0.0541)  0.3266(0.0438)  0.2874(0.0679)  0.4560(0.0769)  0.4212(0.0339)  0.6671(0.0089)
Metal nut   0.2465(0.0464)  0.2958(0.0089)  0.1876(0.0677)  0.1551(0.0576)  0.3920(0.0709)  0.4647(0.0504)  0.6234(0.0105)
Pill        0.1475(0.0132)  0.1254(0.0434)  0.1506(0.0191)  0.1478(0.0225)  0.1922(0.0090)  0.1970(0.0140)  0.4245(0.0402)
Screw       0.0918(0.0062)  0.0894(0.0237)  0.0937(0.0853)  0.0857(0.0076)  0.0708(0.0058)  0.0482(0.0629)  0.1801(0.0398)
Toothbrush  -               -               -               -               -               -               -
Transistor  0.1113(0.0018)  0.1425(0.0064)  0.1314(0.0327)  0.1516(0.0550)  0.1214(0.0057)  0.1193(0.0360)  0.2061(0.0081)
Zipper      0.4771(0.0561)  0.4597(0.0175)  0.5339(0.0397)  0.4905(0.0119)  0.5804(0.0325)  0.4651(0.0325)  0.6096(0.0056)
Mean        0.3137          0.2917          0.3136          0.2824          0.3458          0.3327          0.4919
5-shot
Carpet      0.5934(0.0115)  0.5902(0.0084)  0.6692(0.0054)  0.5292(0.1215)  0.6331(0.0034)  0.5938(0.0069)  0.7112(0.0180)
Grid        0.5023(0.0083)  0.4189(0.0134)  0.5412(0.0021)  0.4677(0.0264)  0.5543(0.0291)  0.4514(0.0343)  0.5577(0.0040)
Leather     0.4564(0.0355)  0.4084(0.0339)  0.5788(0.0455)  0.4150(0.0018)  0.5489(0.0316)  0.6062(0.0169)  0.6887(0.0025)
Tile        0.8203(0.0047)  0.7611(0.1160)  0.8498(0.0059)  0.8104(0.0109)  0.8439(0.0157)  0.8505(0.0021)  0.8713(0.0033)
Wood        0.6265(0.0003)  0.6491(0.0303)  0.6288(0.0114)  0.6225(0.0120)  0.7363(0.0029)  0.6856(0.0048)  0.7367(0.0231)
Bottle      0.4799(0.0528)  0.5737(0.0112)  0.4991(0.0015)  0.4551(0.0014)  0.6117(0.0109)  0.5456(0.0830)  0.7615(0.0035)
Cable       0.4848(0.0001)  0.4334(0.0334)  0.4470(0.0183)  0.4407(0.0421)  0.4750(0.0021)  0.4835(0.0110)  0.5891(0.0190)
Capsule     0.3067(0.0018)  0.2913(0.0035)  0.3187(0.0112)  0.3285(0.0340)  0.3224(0.0117)  0.3408(0.0028)  0.4814(0.0242)
Hazelnut    0.6894(0.0173)  0.6955(0.0016)  0.7037(0.0218)  0.6621(0.0262)  0.7618(0.0260)  0.7542(0.0238)  0.7876(0.0142)
Metal nut   0.6451(0.0640)  0.6763(0.0004)  0.5385(0.1620)  0.6649(0.0131)  0.7244(0.0006)  0.6540(0.0805)  0.7742(0.0158)
Pill        0.5035(0.0668)  0.4749(0.0165)  0.4610(0.0351)  0.4222(0.0436)  0.5629(0.0401)  0.3623(0.0529)  0.6976(0.0163)
Screw       0.2512(0.0014)  0.2533(0.0544)  0.2351(0.0109)  0.2385(0.0142)  0.2628(0.0316)  0.2204(0.0385)  0.3696(0.0364)
Toothbrush  0.0113(0.0117)  0.0627(0.0403)  0.0197(0.0006)  0.0234(0.0128)  0.0752(0.0212)  0.1382(0.0380)  0.2982(0.0328)
Transistor  0.4317(0.0350)  0.4345(0.0906)  0.3754(0.0749)  0.4145(0.0345)  0.4253(0.0537)  0.3164(0.0689)  0.5766(0.0144)
Zipper      0.6214(0.0105)  0.5928(0.0057)  0.6171(0.0052)  0.6002(0.0074)  0.6560(0.0247)  0.6142(0.0064)  0.6786(0.0065)
Mean        0.4949          0.4877          0.4989          0.4730          0.5463          0.5078          0.6296
"""

_TABLE_III = """
1-shot
Carpet      0.5721(0.0433)  0.5857(0.0603)  0.6317(0.0039)  0.5728(0.0528)  0.6267(0.0210)  0.4690(0.0915)  0.7012(0.0052)
Grid        0.4080(0.0016)  0.3278(0.0381)  0.4055(0.0309)  0.3393(0.0022)  0.4154(0.0247)  0.3134(0.0549)  0.4688(0.0112)
Leather     0.5294(0.0858)  0.2587(0.0726)  0.4365(0.0100)  0.2716(0.0604)  0.3705(0.0206)  0.5839(0.0106)  0.6853(0.0046)
Tile        0.7789(0.0081)  0.7691(0.0059)  0.8368(0.0101)  0.7711(0.0163)  0.8375(0.0134)  0.8476(0.0170)  0.9050(0.0107)
Wood        0.6217(0.0395)  0.6796(0.0837)  0.6403(0.0229)  0.5671(0.0440)  0.6283(0.0123)  0.5859(0.0289)  0.7253(0.0083)
Bottle      0.3990(0.0036)  0.3973(0.0117)  0.3577(0.0385)  0.3898(0.0301)  0.3696(0.0270)  0.4421(0.0398)  0.7880(0.0132)
Cable       0.2900(0.0316)  0.2532(0.0245)  0.2795(0.0094)  0.3283(0.0240)  0.2705(0.0275)  0.2823(0.0273)  0.3850(0.0078)
Capsule     0.1961(0.0024)  0.1944(0.0024)  0.1660(0.0384)  0.1654(0.0337)  0.2986(0.0191)  0.1983(0.0015)  0.3531(0.0072)
Hazelnut    0.4767(0.0223)  0.3749(0.0644)  0.4377(0.0508)  0.3871(0.0793)  0.5701(0.0844)  0.5290(0.0362)  0.7752(0.0100)
Metal nut   0.3142(0.0535)  0.3460(0.0128)  0.2478(0.0793)  0.2034(0.0481)  0.4933(0.0655)  0.5346(0.0579)  0.7195(0.0131)
Pill        0.2032(0.0179)  0.2124(0.0544)  0.2027(0.0233)  0.2027(0.0282)  0.2501(0.0122)  0.2547(0.0106)  0.5254(0.0454)
Screw       0.1297(0.0080)  0.1599(0.0363)  0.1815(0.0387)  0.1200(0.0049)  0.0980(0.0035)  0.0816(0.1061)  0.2248(0.0541)
Toothbrush  -               -               -               -               -               -               -
Transistor  0.1715(0.0089)  0.1905(0.0120)  0.1627(0.0754)  0.2206(0.0735)  0.1768(0.0112)  0.1754(0.0421)  0.2840(0.0063)
Zipper      0.6251(0.0583)  0.6256(0.0209)  0.6824(0.0383)  0.6418(0.0164)  0.7214(0.0307)  0.6057(0.0349)  0.7416(0.0054)
Mean        0.4083          0.3839          0.4049          0.3701          0.4377          0.4217          0.5916
5-shot
Carpet      0.7225(0.0164)  0.7195(0.0069)  0.7864(0.0057)  0.6621(0.1039)  0.7534(0.0001)  0.7281(0.0068)  0.8219(0.0146)
Grid        0.6490(0.0074)  0.5681(0.0086)  0.6922(0.0021)  0.6187(0.0255)  0.6968(0.0262)  0.6020(0.0320)  0.6852(0.0046)
Leather     0.6012(0.0315)  0.5591(0.0357)  0.7121(0.0392)  0.5603(0.0026)  0.6829(0.0347)  0.7304(0.0205)  0.8033(0.0018)
Tile        0.8948(0.0023)  0.8422(0.0977)  0.9145(0.0053)  0.8874(0.0079)  0.9102(0.0107)  0.9153(0.0003)  0.9282(0.0021)
Wood        0.7523(0.0027)  0.7738(0.0270)  0.7480(0.0078)  0.7522(0.0082)  0.8403(0.0030)  0.8049(0.0057)  0.8410(0.0182)
Bottle      0.6088(0.0511)  0.6905(0.0100)  0.6250(0.0072)  0.5860(0.0011)  0.7291(0.0064)  0.6586(0.0784)  0.8490(0.0033)
Cable       0.5877(0.0036)  0.5261(0.0286)  0.5416(0.0202)  0.5403(0.0361)  0.5699(0.0037)  0.5699(0.0140)  0.6768(0.0156)
Capsule     0.4199(0.0047)  0.4037(0.0019)  0.4306(0.0101)  0.4375(0.0419)  0.4311(0.0122)  0.4565(0.0033)  0.6035(0.0250)
Hazelnut    0.7999(0.0124)  0.7986(0.0018)  0.8091(0.0139)  0.7801(0.0235)  0.8504(0.0252)  0.8489(0.0212)  0.8762(0.0097)
Metal nut   0.7381(0.0706)  0.7689(0.0001)  0.6365(0.1570)  0.7570(0.0062)  0.8108(0.0027)  0.7516(0.0754)  0.8574(0.0150)
Pill        0.6240(0.0673)  0.5865(0.0161)  0.5795(0.0361)  0.5366(0.0448)  0.6745(0.0453)  0.4620(0.0547)  0.8022(0.0180)
Screw       0.3235(0.0095)  0.3303(0.0670)  0.3006(0.0129)  0.3142(0.0158)  0.3257(0.0307)  0.2795(0.0467)  0.4458(0.0414)
Toothbrush  0.0165(0.0225)  0.0848(0.0556)  0.0309(0.0006)  0.0372(0.0172)  0.1085(0.0293)  0.2014(0.0474)  0.4060(0.0349)
Transistor  0.5421(0.0513)  0.5456(0.0981)  0.4937(0.0935)  0.5354(0.0407)  0.5587(0.0593)  0.4072(0.0783)  0.6981(0.0180)
Zipper      0.7542(0.0096)  0.7283(0.0061)  0.7483(0.0045)  0.7358(0.0056)  0.7803(0.0195)  0.7481(0.0009)  0.7977(0.0058)
Mean        0.6023          0.5950          0.6033          0.5827          0.6482          0.6110          0.7320
"""

# Table IV, in percent: 1-shot ACC, 1-shot AUC, 5-shot ACC, 5-shot AUC.
_TABLE_IV = """
TernausNet11    78.57  83.13  90.51  94.11
TernausNet16    76.99  81.83  89.04  93.58
UNet            80.26  86.25  90.88  93.98
AttentionUNet   74.94  81.22  86.69  88.84
UNetPP          81.23  87.10  90.01  94.47
AlbuNet         77.78  83.97  85.96  89.47
B_NBR_CaP       88.56  92.19  94.12  97.03
"""

# Tables V-VII: 1-shot IoU, 1-shot DC, 5-shot IoU, 5-shot DC.
_ABLATION_TABLES = {
    "V": """
B               0.3190  0.3936  0.5507  0.6537
B_NBR           0.4241  0.5245  0.6039  0.7101
B_NBR_CaP       0.4919  0.5944  0.6445  0.7479
""",
    "VI": """
B_NBR_CaP1      0.4745  0.5728  0.6371  0.7398
B_NBR_CaP       0.4919  0.5944  0.6445  0.7479
""",
    "VII": """
B_NBReuc_CaP    0.4954  0.5947  0.6186  0.7223
B_NBR_CaP       0.4919  0.5944  0.6445  0.7479
""",
}

_CELL = re.compile(r"^(\d\.\d+)\((\d\.\d+)\)$")


def _parse_per_category(block: str):
    """Block of "1-shot"/"5-shot" sections -> ({shot: {method: {category: cell}}}, {shot: {method: mean}})."""
    values, means, shot = {}, {}, None
    for line in block.strip().splitlines():
        tokens = line.split()
        if tokens[0].endswith("-shot"):
            shot = int(tokens[0].split("-")[0])
            values[shot] = {m: {} for m in METHODS}
            continue
        name, cells = "_".join(tokens[: -len(METHODS)]).lower(), tokens[-len(METHODS):]
        if name == "mean":
            means[shot] = {m: float(c) for m, c in zip(METHODS, cells)}
            continue
        for method, cell in zip(METHODS, cells):
            match = _CELL.match(cell)
            if cell != "-" and match is None:
                raise ValueError(f"bad cell {cell!r} in row {line!r}")
            values[shot][method][name] = None if cell == "-" else (float(match[1]), float(match[2]))
    for shot, columns in values.items():
        for method, column in columns.items():
            if tuple(column) != CATEGORIES:
                raise ValueError(f"{shot}-shot {method}: categories {tuple(column)} != CATEGORIES")
    return values, means


def _parse_rows(block: str) -> dict[str, list[float]]:
    return {row.split()[0]: [float(x) for x in row.split()[1:]] for row in block.strip().splitlines()}


_iou, _iou_means = _parse_per_category(_TABLE_II)
_dice, _dice_means = _parse_per_category(_TABLE_III)
PER_CATEGORY = {"iou": _iou, "dice": _dice}
PRINTED_MEANS = {"iou": _iou_means, "dice": _dice_means}

DETECTION = {shot: {} for shot in (1, 5)}
for _method, (_acc1, _auc1, _acc5, _auc5) in _parse_rows(_TABLE_IV).items():
    DETECTION[1][_method] = {"acc": round(_acc1 / 100, 4), "auc": round(_auc1 / 100, 4)}
    DETECTION[5][_method] = {"acc": round(_acc5 / 100, 4), "auc": round(_auc5 / 100, 4)}

ABLATIONS = {
    table: {
        method: {1: {"iou": iou1, "dice": dc1}, 5: {"iou": iou5, "dice": dc5}}
        for method, (iou1, dc1, iou5, dc5) in _parse_rows(block).items()
    }
    for table, block in _ABLATION_TABLES.items()
}
# The rows of Tables V-VII, in the paper's order.
ABLATION_ROWS = {table: tuple(rows) for table, rows in ABLATIONS.items()}
# Every method id of Tables II-VII, each once: what a variant's ``paper`` may name.
ALL_METHODS = tuple(dict.fromkeys([*METHODS, *(m for rows in ABLATIONS.values() for m in rows)]))


def paper_column(metric: str, shot: int, method: str) -> dict[str, tuple[float, float] | None]:
    """One column of Table II (``metric="iou"``) or III (``"dice"``): category -> (mean, std) | None."""
    return dict(PER_CATEGORY[metric][shot][method])


def dice_against_pooled_identity() -> tuple[int, int, float]:
    """Which IoU the paper reports, read from its own Tables II and III.

    Pooled counts (TP, FP, FN summed over a category's images) give Dice = 2 IoU / (1 + IoU)
    exactly; per-image means give a lower Dice (the function is concave: Jensen's inequality).
    Returns ``(cells whose Dice is below 2 IoU / (1 + IoU), cells with both numbers, median of
    Dice - 2 IoU / (1 + IoU))`` over every method, shot and category. The paper's figures are
    means over 5 seeds, which also lowers Dice a little, so only a clear majority says which.
    """
    gaps = []
    for shot, columns in PER_CATEGORY["iou"].items():
        for method, column in columns.items():
            for category, cell in column.items():
                dice = PER_CATEGORY["dice"][shot][method][category]
                if cell is not None and dice is not None:
                    gaps.append(dice[0] - 2 * cell[0] / (1 + cell[0]))
    below = sum(g < 0 for g in gaps)
    return below, len(gaps), float(statistics.median(gaps))
