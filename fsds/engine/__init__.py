"""How training and prediction run: the device and precision, Algorithm 1's loop
(``training``), checkpoints, resumable snapshots and batched prediction. Imports ``fsds.data``,
``fsds.method`` and ``fsds.evaluation.metrics``; knows nothing of DVC or MLflow.
"""
