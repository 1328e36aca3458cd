"""The ``tunnelmesh`` command line: core commands plus those that plugins add.

One module per command; this file only assembles them. Errors that tunnelmesh raises on purpose
(:class:`~tunnelmesh.errors.TunnelmeshError`) print as one line without a traceback.
"""

from __future__ import annotations

import contextlib
import faulthandler
import signal

import click

from tunnelmesh._manager import make_plugin_manager
from tunnelmesh.cli._root import build_cli, cli
from tunnelmesh.errors import TunnelmeshError

__all__ = ["build_cli", "cli", "main"]


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code (the ``tunnelmesh`` console script).

    ``kill -USR1 <pid>`` makes any tunnelmesh process print every thread's stack to stderr
    (for a daemon that seems stuck).
    """
    if hasattr(signal, "SIGUSR1"):
        # not when stderr is no real file (an in-process test runner capturing output)
        with contextlib.suppress(AttributeError, OSError, ValueError):
            faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        pm = make_plugin_manager()
        root = build_cli(pm)
        root.main(args=argv, prog_name="tunnelmesh", standalone_mode=False, obj=pm)
    except TunnelmeshError as exc:
        click.echo(f"tunnelmesh: error: {exc}", err=True)
        return 1
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    return 0
