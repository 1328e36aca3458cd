"""Object storage backends shipped with core, and the naming rules every backend follows.

:class:`FilesystemStorage` (``name = "filesystem"``) is the default backend of the S3 service; it
is registered by the built-in plugin :mod:`tunnelmesh._builtin.storage` through the same
``tunnelmesh_register_storage`` hook any other backend uses. Backends implement
:class:`tunnelmesh.abc.Storage`; :func:`tunnelmesh.storage.conformance.check_storage` is the test
suite every backend should pass.
"""

from __future__ import annotations

from tunnelmesh.storage._names import MAX_KEY_BYTES, check_bucket_name, check_key
from tunnelmesh.storage.filesystem import FilesystemStorage

__all__ = ["MAX_KEY_BYTES", "FilesystemStorage", "check_bucket_name", "check_key"]
