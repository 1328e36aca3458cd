"""tunnelmesh-postgres: the coordinator's state in PostgreSQL, shared by several coordinators.

The store is :class:`tunnelmesh_postgres.store.PostgresStore`; importing this package does not
import psycopg (the plugin module is loaded by every ``tunnelmesh`` command).
"""

from __future__ import annotations
