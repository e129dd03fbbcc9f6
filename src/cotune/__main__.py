"""``python -m cotune``: the command line (see :mod:`cotune.cli`)."""

from cotune.cli import app

app()
