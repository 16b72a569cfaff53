"""The work of each DVC stage, one module per stage (train, predict, evaluate, report), over
``plan``, which resolves params.yaml once into the engine's plain values; the MLflow tracking
they share; and experiment grids: many runs of the whole pipeline through DVC's queue (grid,
grid_queue, grid_report; ``stages/grid.py``). ``stages/*.py`` are thin ``main()``s over these.
The one layer that reads ``Config``; imports everything below (data, method, evaluation, engine, deploy).
"""
