"""The commands the s3 plugin adds: ``tunnelmesh s3``, ``tunnelmesh buckets``, ``tunnelmesh share``.

One module per command group; :mod:`._common` holds the options they share.
"""

from __future__ import annotations

from tunnelmesh_s3.cli.buckets_cmd import buckets
from tunnelmesh_s3.cli.s3_cmd import s3
from tunnelmesh_s3.cli.share_cmd import share

__all__ = ["buckets", "s3", "share"]
