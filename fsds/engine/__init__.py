"""How training and prediction run, given plain values (never the params.yaml ``Config``):
``device`` (the :class:`Runtime`: device, precision, memory layout, set up once), ``recipe`` (what
to train), ``batches`` and ``training`` (Algorithm 1), ``prediction``, ``checkpoint`` (the one
owner of a trained model's facts) and ``resume``. Imports ``fsds.data``, ``fsds.method`` and
``fsds.evaluation``; knows nothing of DVC or MLflow.
"""
