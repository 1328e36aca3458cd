"""A request the coordinator refuses: :class:`ApiFailure` (an HTTP status, a short code and a
sentence), the 503 of a write the state store does not take, and the checks of request
fields that refuse with one (base64, endpoints)."""

from __future__ import annotations

import base64
import binascii
import logging
from dataclasses import dataclass

from tunnelmesh.control.urls import endpoint_problem
from tunnelmesh.errors import CoordinatorError

__all__ = ["STORE_RETRY_AFTER", "ApiFailure", "store_unavailable"]

log = logging.getLogger("tunnelmesh.coordinator.core")
"""Coordinator's log: every part of it logs under the name it always had."""


@dataclass
class ApiFailure(CoordinatorError):
    """A request refused with an HTTP status, a short code and a sentence for humans."""

    status: int
    error: str
    message: str
    retry_after: float = 0.0

    def __str__(self) -> str:
        return f"{self.status} {self.error}: {self.message}"


STORE_RETRY_AFTER = 5.0
"""Retry-After (seconds) of a write refused because the state store does not answer."""


def store_unavailable(exc: Exception) -> ApiFailure:
    """The answer to a write the state store refused to take (it is down, or unreachable):
    503 with Retry-After. Reads keep being answered from memory meanwhile. The store's own
    message is logged, not sent (it may name hosts of the operator's network)."""
    log.warning("a write was refused: the state store does not answer: %s", exc)
    return ApiFailure(
        503,
        "store_unavailable",
        "the coordinator cannot save state now (its database does not answer); "
        "reads still work, retry the change later",
        STORE_RETRY_AFTER,
    )


def _b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ApiFailure(400, "malformed", f"{what} is not valid base64") from None


def _valid_endpoints(endpoints: list[str]) -> list[str]:
    if len(endpoints) > 16:
        raise ApiFailure(400, "malformed", "at most 16 endpoints")
    for ep in endpoints:
        why = endpoint_problem(ep)
        if why is not None:
            raise ApiFailure(400, "bad_endpoint", f"endpoint {ep!r} {why}")
    return list(endpoints)
