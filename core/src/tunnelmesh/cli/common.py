"""What a plugin's commands share with core's: the ``--context`` and ``--json`` options, one
call to the coordinator's API as this peer (``api_call``) and tables (``echo_table``).

A plugin's admin command (``tunnelmesh wg add``) looks and fails like core's
(``tunnelmesh group create``): the same option names and environment variables, the same
one-line error when the coordinator refuses.
"""

from __future__ import annotations

from tunnelmesh.cli._api import api_call
from tunnelmesh.cli._options import context_option, json_option
from tunnelmesh.cli._table import echo_table, format_table

__all__ = ["api_call", "context_option", "echo_table", "format_table", "json_option"]
