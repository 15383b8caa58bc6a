"""The command line: one typer app (``main``) and a module per group of commands.

Commands only declare options, call one ``edgexfer.api`` function and render the result.
"""

from edgexfer.cli.main import app, main

__all__ = ["app", "main"]
