"""The rules every object storage backend follows: bucket names and object keys.

Backends implement :class:`tunnelmesh.abc.Storage` and register through the
``tunnelmesh_register_storage`` hook; :data:`tunnelmesh.storage.conformance.CHECKS` are the
checks every backend should pass. Core ships no backend: the S3 plugin (``pip install
tunnelmesh[s3]``) registers its ``filesystem`` backend through that hook like any other.
"""

from __future__ import annotations

from tunnelmesh.storage._names import MAX_KEY_BYTES, check_bucket_name, check_key

__all__ = ["MAX_KEY_BYTES", "check_bucket_name", "check_key"]
