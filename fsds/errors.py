"""The errors fsds raises on purpose: bad input that the user can fix.

Each message names the bad key or file and says what to do. A stage (``stages/*.py``) prints
such an error as ``error: <message>`` alone and exits with status 1; any other exception is a
bug and keeps its traceback. The classes also derive from the built-in exception a caller would
expect (``ValueError``, ``FileNotFoundError``), so ``except ValueError`` keeps working.
"""

from __future__ import annotations

import sys
from typing import Callable


class FsdsError(Exception):
    """Bad input, named in the message with its fix."""


class ConfigError(FsdsError, ValueError):
    """A value in params.yaml (or a grid file) is missing, unknown or out of range."""


class InputError(FsdsError, ValueError):
    """A dataset, image, mask or model file is unusable as it is."""


class MissingFileError(FsdsError, FileNotFoundError):
    """A file or folder the work needs is not there."""


class RunError(FsdsError, RuntimeError):
    """A step outside fsds (DVC, MLflow, ONNX Runtime) failed; the message says where to look."""


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's ``main()``; an :class:`FsdsError` becomes ``error: <message>`` on stderr and exit 1."""
    try:
        main()
    except FsdsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
