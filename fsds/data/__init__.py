"""What the data is: datasets on disk (MVTec AD layout), their sources and the K-shot split.

``datasets`` indexes a dataset and ``sources`` prepares it (``archives`` lists the public archives,
``download`` fetches and ``extract`` unpacks them; ``synthetic`` generates the embedded default,
drawing with ``drawing`` and ``defects``), ``split`` draws the K shots, ``images`` turns files into
network input. Imports only ``fsds.config``, ``fsds.errors`` and ``fsds.io``. (No imports here: a
DVC stage depends on exactly the modules it runs.)
"""
