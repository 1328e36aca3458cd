"""Relay transport for tunnelmesh."""
