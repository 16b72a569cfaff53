"""A trained model outside the pipeline: the self-contained deployable network, prediction on
image files, ONNX export and the ``fsds`` command. Imports ``fsds.engine`` and below.
"""
