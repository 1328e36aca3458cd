"""Log lines: text and JSON formats, and the redaction of secrets."""

from __future__ import annotations

import base64
import io
import json
import logging
from collections.abc import Iterator

import click
import pytest
from click.testing import CliRunner
from tunnelmesh import hookimpl
from tunnelmesh._manager import PluginManager
from tunnelmesh.cli import build_cli
from tunnelmesh.identity import Identity
from tunnelmesh.logs import (
    REDACTED,
    JsonFormatter,
    Redactor,
    TextFormatter,
    add_secret,
    redact,
    setup_logging,
)


@pytest.fixture
def logger() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    out = io.StringIO()
    log = logging.getLogger("tunnelmesh.test_logs")
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    log.propagate = False
    try:
        yield log, out
    finally:
        log.removeHandler(handler)
        log.propagate = True


def lines(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_json_line_has_time_level_logger_message_fields(
    logger: tuple[logging.Logger, io.StringIO],
) -> None:
    log, out = logger
    log.debug("peer %s up", "alice", extra={"peer": "alice", "rtt_ms": 1.5, "ok": True})
    (rec,) = lines(out)
    assert set(rec) == {"time", "level", "logger", "message", "fields"}
    assert rec["level"] == "debug" and rec["logger"] == "tunnelmesh.test_logs"
    assert rec["message"] == "peer alice up"
    assert rec["fields"] == {"peer": "alice", "rtt_ms": 1.5, "ok": True}
    assert isinstance(rec["time"], str) and rec["time"].endswith("Z") and "T" in rec["time"]


def test_json_exception_is_a_field(logger: tuple[logging.Logger, io.StringIO]) -> None:
    log, out = logger
    try:
        raise ValueError("bad")
    except ValueError:
        log.exception("failed")
    (rec,) = lines(out)
    assert rec["level"] == "error"
    fields = rec["fields"]
    assert isinstance(fields, dict) and "ValueError: bad" in fields["exc"]


def test_registered_secrets_never_appear(logger: tuple[logging.Logger, io.StringIO]) -> None:
    log, out = logger
    secret = "tok-" + "x7" * 12
    add_secret(secret)
    log.info("joining with %s", secret)
    log.info("as repr: %r", {"t": secret})
    log.info("as field", extra={"note": f"value {secret}"})
    log.info('quoted "%s"', secret)
    try:
        raise RuntimeError(f"refused {secret}")
    except RuntimeError:
        log.exception("boom")
    text = out.getvalue()
    assert secret not in text
    assert text.count(REDACTED) >= 5
    lines(out)  # still JSON


def test_bytes_secrets_are_redacted_as_hex_and_base64() -> None:
    r = Redactor()
    key = bytes(range(32))
    r.add(key)
    for form in (key.hex(), base64.b64encode(key).decode(), base64.urlsafe_b64encode(key).decode()):
        assert form not in r(f"key {form} end"), form


def test_identity_keys_are_registered() -> None:
    ident = Identity.generate()
    seed = ident._seed()
    assert seed.hex() not in redact(f"seed {seed.hex()}")
    assert ident.x25519_private().hex() not in redact(f"x {ident.x25519_private().hex()}")


@pytest.mark.parametrize(
    "text,kept",
    [
        ("token=abcdef123456 next", "next"),
        ('{"session_token": "abcdef123456", "name": "alice"}', '"name": "alice"'),
        ("auth_token: abcdef123456", "auth_token: "),
        ("{'secret_key': 'abcdef123456'}", "'secret_key': '"),
        ("Authorization: Bearer abcdefghijkl123", "Authorization:"),
        ("AWS4-HMAC-SHA256 Credential=AK/x, Signature=" + "ab" * 32, "AWS4-HMAC-SHA256"),
        ("-----BEGIN OPENSSH PRIVATE KEY-----\nAAAAB3\n-----END OPENSSH PRIVATE KEY-----", ""),
    ],
)
def test_secret_looking_values_are_redacted(text: str, kept: str) -> None:
    r = Redactor()
    out = r(text)
    assert REDACTED in out
    assert "abcdef123456" not in out and "ab" * 32 not in out and "AAAAB3" not in out
    assert kept in out


@pytest.mark.parametrize(
    "text",
    [
        "peer alice registered at 10.99.0.2",
        "the mesh token verification failed",
        "key=alice",  # the name says nothing secret
        "Basic configuration loaded",
    ],
)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert Redactor()(text) == text


def test_secret_named_fields_are_redacted() -> None:
    fields = Redactor().fields({"password": "hunter22", "peer": "alice", "s3_secret_key": "zz"})
    assert fields == {"password": REDACTED, "peer": "alice", "s3_secret_key": REDACTED}


def test_text_format_appends_fields_redacted() -> None:
    rec = logging.LogRecord("tunnelmesh.x", logging.INFO, __file__, 1, "up %s", ("a",), None)
    rec.peer = "alice"
    rec.api_key = "k" * 10
    line = TextFormatter().format(rec)
    assert line.endswith(f"tunnelmesh.x: up a peer=alice api_key={REDACTED}")


def test_setup_logging_replaces_its_own_handler_only() -> None:
    root = logging.getLogger()
    other = logging.NullHandler()
    root.addHandler(other)
    before = list(root.handlers)
    level = root.level
    try:
        setup_logging("debug", "json")
        setup_logging("info", "text")
        added = [h for h in root.handlers if h not in before]
        assert len(added) == 1 and isinstance(added[0].formatter, TextFormatter)
        assert other in root.handlers
        with pytest.raises(ValueError, match="log format"):
            setup_logging("info", "xml")
    finally:
        for h in root.handlers[:]:
            if h not in before:
                root.removeHandler(h)
        root.removeHandler(other)
        root.setLevel(level)


class _Talk:
    """A plugin with a command that logs (secrets included)."""

    @hookimpl
    def tunnelmesh_register_commands(self, cli: click.Group) -> None:
        @cli.command()
        def talk() -> None:
            logging.getLogger("tunnelmesh.talk").debug("hello token=abcdefgh", extra={"n": 1})

        _ = talk


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_cli_log_format(fmt: str) -> None:
    """``tunnelmesh --log-format FMT -l debug`` applies to every command's logs."""
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    pm = PluginManager()
    pm.register(_Talk(), name="talk")
    try:
        result = CliRunner().invoke(
            build_cli(pm), ["--log-format", fmt, "-l", "debug", "talk"], obj=pm
        )
    finally:
        for h in root.handlers[:]:
            if h not in before:
                root.removeHandler(h)
        root.setLevel(level)
    assert result.exit_code == 0, result.output
    (line,) = [ln for ln in result.stderr.splitlines() if "hello" in ln]
    assert "abcdefgh" not in line
    if fmt == "json":
        rec = json.loads(line)
        assert rec["logger"] == "tunnelmesh.talk" and rec["fields"] == {"n": 1}
        assert rec["message"] == f"hello token={REDACTED}"
    else:
        assert line.endswith(f"DEBUG   tunnelmesh.talk: hello token={REDACTED} n=1")


def test_help_names_the_option_and_envvar() -> None:
    result = CliRunner().invoke(build_cli(PluginManager()), ["--help"])
    assert "--log-format" in result.output and "TUNNELMESH_LOG_FORMAT" in result.output
