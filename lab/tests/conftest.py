"""The fixtures of ``tests/conftest.py`` that the lab's tests use."""

from tests.conftest import _mlflow_uri_restored, tiny_root  # noqa: F401 - pytest finds fixtures by name
