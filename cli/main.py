"""The ``hotswap`` console entry point. Each command parses, calls one function below ``cli/``,
renders; heavy libraries (torch, faiss, triton) are imported inside the commands so that
``hotswap --help`` starts fast. Domain errors become one line and an exit code here, in one place.
"""

from __future__ import annotations

import sys

import typer

from cli import (  # noqa: F401  (they register commands)
    gallery_commands,
    migrate_commands,
    models_commands,
    setup_commands,
    train_commands,
)
from cli.app import app, state

__all__ = ["app", "main"]


def main() -> None:
    """Console entry point: domain errors become one line on stderr and their exit code.

    Typer runs in standalone mode, so usage errors and Ctrl-C keep click's own messages and codes.
    """
    from kernels.errors import HotswapError  # torch-free (kernels exports its ops lazily)

    try:
        app()
    except Exception as e:
        if not isinstance(e, HotswapError) or state["debug"]:
            raise
        typer.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
