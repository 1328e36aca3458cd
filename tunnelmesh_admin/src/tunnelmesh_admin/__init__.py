"""The admin dashboard: a coordinator's mesh at a glance, served on its mesh IP (port 443).

See ``tunnelmesh_admin.service`` for how the caller is identified and what the server checks.
"""

from __future__ import annotations

__all__: list[str] = []
