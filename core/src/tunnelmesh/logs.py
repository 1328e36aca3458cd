"""Logging setup for every command: text or JSON lines, and a redaction layer for secrets.

``tunnelmesh --log-format json ...`` writes one JSON object per line on stderr::

    {"time": "2026-12-06T04:41:02.123Z", "level": "info", "logger": "tunnelmesh.node",
     "message": "...", "fields": {"peer": "alice"}}

``fields`` holds what a call passed with ``extra=`` (and ``exc``, the traceback, when there is
one). The text format is the one of ``tunnelmesh`` before JSON existed.

Secrets never reach a log line at any level: every line, in both formats, passes through
:class:`Redactor` last. It replaces

* every value handed to :func:`add_secret` (the mesh token, session tokens, S3 secret keys, ...:
  the code that reads or mints a secret registers it at once);
* what *looks* like a secret whoever logs it (a third-party library at debug level, say):
  ``token=...``/``"secret": "..."`` style assignments whose name says secret, ``Bearer ...``
  credentials, SigV4 signatures and PEM private keys;
* the value of every ``extra=`` field whose name says secret.

Redaction is the last step of formatting, so it also covers messages built with ``%`` arguments,
``repr()`` of objects, and tracebacks.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import re
import sys
import threading
from collections.abc import Iterable
from typing import Any, TextIO

__all__ = [
    "LOG_FORMATS",
    "JsonFormatter",
    "Redactor",
    "TextFormatter",
    "add_secret",
    "redact",
    "redactor",
    "setup_logging",
]

LOG_FORMATS = ("text", "json")
REDACTED = "[REDACTED]"

# Names of fields that hold secrets: any identifier containing one of these words.
_SECRET_WORDS = (
    r"token|secret|passw(?:or)?d|passphrase|private[_-]?key|api[_-]?key|authorization"
    r"|signature|credentials?|cookie"
)
SECRET_NAME = rf"(?:[a-z0-9_.-]*(?:{_SECRET_WORDS})[a-z0-9_-]*)"
_SECRET_FIELD = re.compile(rf"^{SECRET_NAME}$", re.IGNORECASE)
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # PEM private keys (OpenSSH, PKCS#8, RSA, EC)
    (
        re.compile(
            r"-----BEGIN ([A-Z ]*)PRIVATE KEY-----.*?(?:-----END \1PRIVATE KEY-----|$)", re.S
        ),
        REDACTED,
    ),
    # HTTP credentials
    (re.compile(r"\b(Bearer)\s+[A-Za-z0-9._~+/=-]{8,}"), rf"\1 {REDACTED}"),
    # SigV4: the signature (the access key id is no secret)
    (re.compile(r"(Signature=)[0-9a-fA-F]{16,}"), rf"\1{REDACTED}"),
    # name=value / name: value / "name": "value" / 'name': b'value' where the name says secret;
    # the quotes stay (a JSON line stays JSON), a backslash ends a bare value (JSON escapes)
    (
        re.compile(
            rf"""(?ix)
            (["']?\b{SECRET_NAME}["']?\s*[=:]\s*(?-i:b)?)  # name, = or :
            (["']?)                                  # an opening quote
            (?!\[REDACTED\])
            [^"'\s,;&\\)}}\]]{{4,}}                  # the value
            """
        ),
        rf"\1\2{REDACTED}",
    ),
)
_MIN_SECRET = 6  # shorter values would redact ordinary words


class Redactor:
    """Replaces secrets in text; thread-safe. See the module docstring for what it catches.

    Known values are found with plain substring tests (C speed, no regex to recompile when a
    secret is added): a process knows a handful of them.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: set[str] = set()
        self._ordered: tuple[str, ...] = ()

    def add(self, *values: str | bytes | None) -> None:
        """Never log these values (and their hex and base64 forms when bytes); short ones are
        ignored."""
        new: list[str] = []
        for v in values:
            if v is None:
                continue
            if isinstance(v, bytes):
                import base64

                forms = [
                    v.hex(),
                    base64.b64encode(v).decode(),
                    base64.urlsafe_b64encode(v).decode(),
                ]
                forms += [f.rstrip("=") for f in forms]
            else:
                forms = [v]
            for f in forms:
                if len(f) >= _MIN_SECRET:
                    new += [f, json.dumps(f)[1:-1]]  # and how JSON spells it, if different
        with self._lock:
            if not set(new) - self._values:
                return
            self._values.update(new)
            # longest first: a secret that contains another is replaced whole
            self._ordered = tuple(sorted(self._values, key=len, reverse=True))

    def clear(self) -> None:
        with self._lock:
            self._values.clear()
            self._ordered = ()

    def __call__(self, text: str) -> str:
        for v in self._ordered:
            if v in text:
                text = text.replace(v, REDACTED)
        for pattern, repl in _PATTERNS:
            text = pattern.sub(repl, text)
        return text

    def fields(self, fields: dict[str, Any]) -> dict[str, Any]:
        """``extra=`` fields with secret-named ones replaced and every string redacted."""
        out: dict[str, Any] = {}
        for k, v in fields.items():
            if _SECRET_FIELD.match(k):
                out[k] = REDACTED
            elif isinstance(v, str):
                out[k] = self(v)
            elif isinstance(v, bool | int | float) or v is None:
                out[k] = v
            else:
                out[k] = self(repr(v) if not isinstance(v, list | tuple | dict) else _jsonish(v))
        return out


def _jsonish(v: Any) -> str:
    try:
        return json.dumps(v, default=str)
    except (TypeError, ValueError):
        return repr(v)


redactor = Redactor()
"""The process-wide redactor every handler that :func:`setup_logging` installs uses."""


def add_secret(*values: str | bytes | None) -> None:
    """Register secrets that must never appear in a log line (empty/None values are ignored)."""
    redactor.add(*values)


def redact(text: str) -> str:
    """``text`` with every known and every secret-looking value replaced by ``[REDACTED]``."""
    return redactor(text)


# The attributes every LogRecord has; anything else came from ``extra=``.
_STANDARD = set(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """What a logging call passed with ``extra=``."""
    return {
        k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")
    }


class TextFormatter(logging.Formatter):
    """``HH:MM:SS LEVEL   logger: message k=v ...``, redacted."""

    def __init__(self, redactor_: Redactor | None = None) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S")
        self.redactor = redactor_ or redactor

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = record_fields(record)
        if fields:
            safe = self.redactor.fields(fields)
            line += " " + " ".join(f"{k}={v}" for k, v in safe.items())
        return self.redactor(line)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ms), level, logger, message, fields."""

    def __init__(self, redactor_: Redactor | None = None) -> None:
        super().__init__()
        self.redactor = redactor_ or redactor

    def format(self, record: logging.LogRecord) -> str:
        r = self.redactor
        fields = r.fields(record_fields(record))
        if record.exc_info:
            fields["exc"] = r(self.formatException(record.exc_info))
        if record.stack_info:
            fields["stack"] = r(self.formatStack(record.stack_info))
        when = _dt.datetime.fromtimestamp(record.created, _dt.UTC)
        obj = {
            "time": when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": r(record.getMessage()),
            "fields": fields,
        }
        # the encoded line passes once more: a secret spelled with JSON escapes is caught too
        return r(json.dumps(obj, ensure_ascii=False, default=str))


_HANDLER_MARK = "_tunnelmesh_handler"


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time of each record (a test runner that
    swaps stderr, then closes its copy, never gets a write on a closed file)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


def setup_logging(level: str = "info", fmt: str = "text", stream: TextIO | None = None) -> None:
    """Send every logger's records (root handler) to ``stream`` (stderr) in ``fmt``.

    Replaces the handler an earlier call installed (so tests and nested CLI calls may call it
    again); other handlers are left alone.

    Raises:
        ValueError: an unknown level or format.
    """
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format {fmt!r}: use one of {', '.join(LOG_FORMATS)}")
    lvl = getattr(logging, level.upper(), None)
    if not isinstance(lvl, int):
        raise ValueError(f"log level {level!r}")
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, _HANDLER_MARK, False):
            root.removeHandler(h)
    handler: logging.Handler = (
        logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    )
    setattr(handler, _HANDLER_MARK, True)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(lvl)
    logging.captureWarnings(True)


def secrets_in(text: str, secrets: Iterable[str]) -> list[str]:
    """Which of ``secrets`` occur in ``text`` (tests; empty: clean)."""
    return [s for s in secrets if s and s in text]
