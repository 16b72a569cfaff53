"""How results are scored and shown: metrics (pure functions of masks and probabilities), the
paper's published numbers, tables in its layout, and figures (pure drawing). Imports ``fsds.data``
for masks and image sizes, nothing that trains.
"""
