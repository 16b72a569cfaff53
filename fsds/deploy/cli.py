"""The ``fsds`` command: use a trained model outside the pipeline.

    fsds predict --model data/models/L0_B_NBR_CaP/fabric.pt photos/ --out inspected/
    fsds predict --model runs:/<run id>/model part.png --out inspected/ --threshold 0.3
    fsds export --model data/models/L0_B_NBR_CaP/fabric.pt --format onnx --out fabric.onnx
    fsds export --model data/models/L0_B_NBR_CaP/fabric.pt --format mlflow --out fabric_model/
    mlflow models serve -m fabric_model/ --env-manager local    # or -m runs:/<run id>/model

``--model`` is an fsds checkpoint or an MLflow model URI (``runs:/<run id>/model``,
``models:/<name>/<version>``; the tracking store is ``MLFLOW_TRACKING_URI``'s).

Exit status: 0 when every image was inspected; 2 on a bad argument, model or input (nothing
inspected); 3 when ``fsds predict`` skipped images it could not read (the others are written, each
skipped one is a row of predictions.csv with decision ``error`` and its reason; ``--strict`` stops at
the first instead, with status 2).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fsds.deploy.files import BATCH_SIZE, image_files, predict_files
from fsds.deploy.model import load_deployed
from fsds.deploy.onnx_export import export_onnx
from fsds.deploy.runtime import RUNTIMES, put_on_runtime
from fsds.engine.device import set_up_runtime
from fsds.engine.prediction import Tiling
from fsds.errors import FsdsError, InputError


EXIT_BAD_INPUT = 2  # nothing was done: a bad argument, model or input
EXIT_SKIPPED = 3  # fsds predict skipped images it could not read; the others are written


def predict(args: argparse.Namespace) -> int:
    files = image_files(args.inputs)  # a bad path or tile size fails before the model loads
    tiling = Tiling(args.tile_size, args.tile_overlap)
    runtime = set_up_runtime(args.device, args.precision, training=False)  # as the predict stage
    model = load_deployed(args.model, runtime.device)
    runtime, backend = put_on_runtime(model, runtime, args.runtime, args.precision)
    results = predict_files(model, files, args.out, runtime, threshold=args.threshold, min_area=args.min_area,
                            batch_size=args.batch_size, tiling=tiling, strict=args.strict)
    flagged = sum(r.defective for r in results)
    skipped = sum(bool(r.error) for r in results)
    print(f"{len(results)} images, {flagged} with a defect"
          + (f", {skipped} unreadable (decision 'error' in predictions.csv)" if skipped else "")
          + f" ({backend}, {runtime.precision}); masks, overlays and predictions.csv in {args.out}")
    return EXIT_SKIPPED if skipped else 0


def export(args: argparse.Namespace) -> int:
    model = load_deployed(args.model, "cpu")
    if args.format == "mlflow":
        return export_mlflow(model, args)
    diff = export_onnx(model, args.out, opset=args.opset)
    shape = (f"RGB in [0, 1] resized by {model.scale:.4g} (aspect kept), padded to a multiple of 32"
             if model.geometry.crops else f"{model.image_size} x {model.image_size} RGB in [0, 1]")
    print(f"wrote {args.out} ({shape} -> probabilities); ONNX Runtime matches PyTorch within {diff:.1e}")
    return 0


def export_mlflow(model, args: argparse.Namespace) -> int:
    from fsds.deploy.mlflow_model import save_mlflow_model
    from fsds.io import atomic_dir

    out = Path(args.out)
    if out.exists():
        raise InputError(f"--out {out} exists: MLflow writes a model into a new folder; remove it or name another")
    with atomic_dir(out) as tmp:
        tmp.rmdir()  # MLflow creates the folder itself; atomic_dir renames it into place when complete
        save_mlflow_model(model, tmp, {"threshold": model.threshold, "min_area": getattr(model, "min_area", 0.0),
                                       "source": str(args.model)})  # an MLflow model from before min_area: 0
    print(f"wrote {out}: serve it with `mlflow models serve -m {out} --env-manager local`")
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="fsds", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("predict", help="segment images with a trained model")
    p.add_argument("inputs", nargs="+", help="image files or folders of images (any size)")
    p.add_argument("--model", required=True, help="fsds checkpoint (.pt) or MLflow model URI")
    p.add_argument("--out", required=True, help="folder for masks/, overlays/ and predictions.csv")
    p.add_argument("--threshold", type=float, default=None,
                   help="probability at or above which a pixel is a defect (default: the model's own: the threshold "
                        "calibrated on its held-out normal images, else metrics.threshold of its training)")
    p.add_argument("--min-area", type=float, default=None,
                   help="an image is defective when its predicted defect area exceeds this fraction of it (default: "
                        "the model's own, calibrated on its held-out normals to flag about metrics.image_fpr of good "
                        "parts; 0 for a model without: any pixel)")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE,
                   help=f"images per network pass (default {BATCH_SIZE}: on a small CPU the fastest end to end)")
    p.add_argument("--tile-size", type=int, default=0,
                   help="predict images larger than this in overlapping tiles of this side (a multiple of 32; "
                        "default 0: whole images, as predict.tile_size of params.yaml)")
    p.add_argument("--tile-overlap", type=int, default=64, help="pixels shared by neighbouring tiles (default 64)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                   help="autocast precision (default auto: bf16 on a CPU with native bf16 or a CUDA GPU with it, as "
                        "the predict stage; probabilities then differ from fp32's by a few 1/255 levels)")
    p.add_argument("--runtime", default="auto", choices=RUNTIMES,
                   help="what runs the network (default auto: ONNX Runtime where it would run in fp32 on a CPU, "
                        "which it does faster than PyTorch; PyTorch under bf16 or on a GPU)")
    p.add_argument("--strict", action="store_true",
                   help="stop at the first image that cannot be read (default: skip it, list it in predictions.csv "
                        "with decision 'error', inspect the rest and exit with status 3)")
    p.set_defaults(func=predict)

    e = sub.add_parser("export", help="write a trained model in a deployable format")
    e.add_argument("--model", required=True, help="fsds checkpoint (.pt) or MLflow model URI")
    e.add_argument("--format", required=True, choices=("onnx", "mlflow"),
                   help="onnx: one file for ONNX Runtime; mlflow: an MLflow model folder for `mlflow models serve`")
    e.add_argument("--out", required=True, help="file (onnx) or new folder (mlflow) to write, e.g. model.onnx")
    e.add_argument("--opset", type=int, default=18)
    e.set_defaults(func=export)

    args = parser.parse_args(argv)
    try:
        status = args.func(args)
    except FsdsError as exc:  # bad input, said plainly; anything else is a bug and keeps its traceback
        print(f"fsds {args.command}: error: {exc}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    if status:
        sys.exit(status)


if __name__ == "__main__":
    main()
