"""The one error path of every `mogen` command: what a user can fix is one line and exit code 2, no traceback.

Its own module so that `mogen.cli` and `mogen.evaluation.cli` both import it without importing each other.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import typer


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the errors a user can fix (bad recipe, missing file, existing run) into one line and exit code 2."""
    from mogen.config import ConfigError

    try:
        yield
    except (ConfigError, FileNotFoundError, FileExistsError) as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(2)
