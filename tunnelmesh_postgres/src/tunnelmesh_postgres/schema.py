"""The PostgreSQL schema and its migrations.

``tunnelmesh_schema`` holds one row: how many of :data:`MIGRATIONS` have run. A store runs the
missing ones at open, each in its own transaction, under a transaction-scoped advisory lock, so
coordinators starting together migrate once and a half-run step never stays. A database whose
version is newer than this tunnelmesh knows is refused.

The tables mirror the SQLite store's (``tunnelmesh.coordinator.sqlite``), with the same
uniqueness rules: one row per key, name and mesh IP in ``peers``; ``names`` keeps a name for
its key after the peer goes (a tombstone); ``addresses`` holds every mesh IP in use and its
owner (peers, and owners that are not peers, such as WireGuard clients), so two coordinators
allocating at once cannot give one address twice.
"""

from __future__ import annotations

__all__ = ["LOCK_ID", "MIGRATIONS"]

LOCK_ID = 0x746D5F7363686D61  # "tm_schma": pg_advisory_xact_lock while migrating

_V1 = """
CREATE TABLE peers (
    peer_id TEXT PRIMARY KEY,
    public_key TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL UNIQUE,
    mesh_ip TEXT NOT NULL UNIQUE,
    is_admin BOOLEAN NOT NULL DEFAULT false,
    is_coordinator BOOLEAN NOT NULL DEFAULT false,
    session_hash TEXT NOT NULL DEFAULT '',
    created_at DOUBLE PRECISION NOT NULL DEFAULT 0,
    last_seen DOUBLE PRECISION NOT NULL DEFAULT 0,
    status BYTEA NOT NULL DEFAULT '\\x7b7d',
    pending BOOLEAN NOT NULL DEFAULT false
);
CREATE INDEX peers_last_seen ON peers (last_seen);
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value BYTEA NOT NULL
);
CREATE TABLE names (
    name TEXT PRIMARY KEY,
    peer_id TEXT NOT NULL
);
CREATE TABLE groups (
    name TEXT PRIMARY KEY,
    members BYTEA NOT NULL,
    created_at DOUBLE PRECISION NOT NULL DEFAULT 0
);
CREATE TABLE addresses (
    mesh_ip TEXT PRIMARY KEY,
    owner TEXT NOT NULL UNIQUE
);
CREATE TABLE docs (
    collection TEXT NOT NULL,
    key TEXT NOT NULL,
    value BYTEA NOT NULL,
    PRIMARY KEY (collection, key)
);
"""

_V2 = """
CREATE TABLE clients (
    client_id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    public_key TEXT NOT NULL,
    mesh_ip TEXT NOT NULL UNIQUE,
    concentrator TEXT NOT NULL,
    preshared_key TEXT NOT NULL DEFAULT '',
    enabled BOOLEAN NOT NULL DEFAULT true,
    expires_at DOUBLE PRECISION NOT NULL DEFAULT 0,
    exit_peer TEXT NOT NULL DEFAULT '',
    created_by TEXT NOT NULL DEFAULT '',
    created_at DOUBLE PRECISION NOT NULL DEFAULT 0,
    UNIQUE (kind, public_key)
);
"""

MIGRATIONS: tuple[str, ...] = (_V1, _V2)
"""SQL run to reach version ``i + 1`` from version ``i`` (``tunnelmesh_schema.version``).

Version 1: peers, meta, names, groups, addresses, docs (the SQLite store's schema 4); version 2:
clients (WireGuard clients; names and addresses in the peers' tables, as in SQLite's schema 5).
"""
