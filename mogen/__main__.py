"""`python -m mogen` is the `mogen` command."""

from mogen.cli import app

app(prog_name="mogen")
