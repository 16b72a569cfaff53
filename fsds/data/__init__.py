"""What the data is: datasets on disk (MVTec AD layout), their sources and the K-shot split.

``datasets`` indexes a dataset and prepares it (``download`` fetches archives, ``synthetic``
generates the embedded default), ``split`` draws the K shots, ``images`` turns files into network
input. Imports only ``fsds.config``, ``fsds.errors`` and ``fsds.io``. (No imports here: a DVC stage
depends on exactly the modules it runs.)
"""
