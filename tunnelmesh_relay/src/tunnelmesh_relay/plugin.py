"""Hook implementations of the ``relay`` plugin (nothing else lives here)."""

from __future__ import annotations
