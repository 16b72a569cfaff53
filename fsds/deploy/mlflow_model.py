"""A deployable model written as an MLflow model folder: what a training run logs as its ``model/``
and what ``fsds export --format mlflow`` writes.

Two flavors: ``pytorch`` (the :class:`~fsds.deploy.model.DeployedModel` pickled, fsds' code beside
it) for ``mlflow.pytorch.load_model``, and ``python_function`` whose loader is
:mod:`fsds.deploy.serving`, named here and imported only where the model is loaded, so that the
training stage, which writes the folder, does not run the serving code.
"""

from __future__ import annotations

import inspect
from importlib.metadata import version
from pathlib import Path
from typing import Any, Mapping

from fsds.deploy.model import DeployedModel

LOADER = "fsds.deploy.serving"  # the python_function flavor's loader_module
# Its model_config: fsds predict's defaults for --device, --precision, --runtime, --tile-size, --tile-overlap.
SETTINGS = {"device": "auto", "precision": "auto", "runtime": "auto", "tile_size": 0, "tile_overlap": 64}
REQUIREMENTS = ("torch", "torchvision", "segmentation-models-pytorch", "numpy", "pillow", "pandas", "onnxruntime")


def signature(model: DeployedModel):
    """What the served model takes and answers, with its params' defaults (the model's own rule)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
    from mlflow.types.schema import Array

    inputs = Schema([ColSpec("binary", "image"), ColSpec("string", "name", required=False)])
    outputs = Schema([ColSpec("string", "image"), ColSpec("long", "height"), ColSpec("long", "width"),
                      ColSpec("double", "score", required=False), ColSpec("double", "max_probability", required=False),
                      ColSpec("string", "decision"), ColSpec("string", "error"), ColSpec("string", "mask"),
                      ColSpec(Array(Array("double")), "probabilities", required=False)])
    params = ParamSchema([ParamSpec("threshold", "double", float(model.threshold)),
                          ParamSpec("min_area", "double", float(getattr(model, "min_area", 0.0))),
                          ParamSpec("probabilities", "boolean", False)])
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def save_mlflow_model(model: DeployedModel, path: str | Path, metadata: Mapping[str, Any]) -> None:
    """Write ``model`` as an MLflow model folder at ``path`` (which must not exist): the ``pytorch``
    flavor (the module pickled; fsds' code travels with it) and this module's ``python_function``
    flavor (:data:`LOADER`), so that ``mlflow models serve -m <path>`` answers as ``fsds predict``."""
    import mlflow.pytorch
    from mlflow import pyfunc
    from mlflow.models import Model

    import fsds

    requirements = [f"{name}=={version(name)}" for name in REQUIREMENTS]
    options = {}
    if "serialization_format" in inspect.signature(mlflow.pytorch.save_model).parameters:
        options["serialization_format"] = "pickle"  # the module itself (newer MLflow defaults to a traced graph)
    path = Path(path)
    mlflow.pytorch.save_model(model, str(path), signature=signature(model), metadata=dict(metadata),
                              code_paths=[str(Path(fsds.__file__).parent)], pip_requirements=requirements, **options)
    # The pytorch flavor's own python_function answers tensors of one size; ours replaces it, with the
    # same code folder and environment files.
    mlmodel = Model.load(str(path / "MLmodel"))
    torch_conf = mlmodel.flavors[pyfunc.FLAVOR_NAME]
    env = torch_conf.get(pyfunc.ENV, {})
    pyfunc.add_to_model(mlmodel, loader_module=LOADER, code=torch_conf.get(pyfunc.CODE),
                        conda_env=env.get(pyfunc.EnvType.CONDA), python_env=env.get(pyfunc.EnvType.VIRTUALENV),
                        model_config=dict(SETTINGS))
    mlmodel.save(str(path / "MLmodel"))
