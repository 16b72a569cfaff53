"""The work of each DVC stage, one module per stage (train, predict, evaluate, report), and the
MLflow tracking they share. ``stages/*.py`` are thin ``main()``s over these. Imports everything
below (data, method, evaluation, engine, deploy).
"""
