"""Attack suite (issue 11), S3 part: a local user cannot read the standalone server's secret.

``tunnelmesh s3 serve`` takes its admin secret from a file or the environment, so it never sits in
``/proc/PID/cmdline`` where any local user can read it, and never prints it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

AK = "AKFILETEST"
SECRET = "file-secret-0c4f2d9e"


def _serve(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tunnelmesh", "s3", "serve", "--listen", "127.0.0.1:0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _stop(proc: subprocess.Popen[str]) -> tuple[str, str]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return out, err


def _failed(proc: subprocess.Popen[str]) -> str:
    """Wait for a server that must refuse to start; its stderr."""
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        _stop(proc)
        raise AssertionError("the server started instead of refusing") from None
    return err


def _client(port: int, secret: str):  # type: ignore[no-untyped-def]
    return boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{port}",
        aws_access_key_id=AK,
        aws_secret_access_key=secret,
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 1}),
    )


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNNELMESH_S3_")}
    env["TUNNELMESH_S3_ACCESS_KEY"] = AK
    return env


@pytest.mark.parametrize("how", ["file", "env"])
def test_secret_from_a_file_or_the_environment_stays_out_of_argv_and_output(
    tmp_path: Path, how: str
) -> None:
    env = _env()
    args = ["--data-dir", str(tmp_path / "data")]
    if how == "file":
        secret_file = tmp_path / "s3.secret"
        fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(SECRET + "\n")
        args += ["--secret-file", str(secret_file)]
    else:
        env["TUNNELMESH_S3_SECRET_KEY"] = SECRET
    proc = _serve(args, env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        assert m, f"server did not start: {line}{_stop(proc)}"
        port = int(m.group(1))
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        assert SECRET.encode() not in cmdline
        _client(port, SECRET).create_bucket(Bucket="proof")  # the secret is the admin's
        with pytest.raises(ClientError) as err:
            _client(port, "not-the-secret").list_buckets()
        assert err.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    finally:
        out, err_text = _stop(proc)
    assert SECRET not in line + out + err_text


def test_secret_on_the_command_line_warns_and_a_missing_one_is_a_usage_error(
    tmp_path: Path,
) -> None:
    proc = _serve(["--data-dir", str(tmp_path / "d1"), "--secret-key", SECRET], _env())
    assert proc.stdout is not None
    line = proc.stdout.readline()
    out, err = _stop(proc)
    assert "serving" in line
    assert "visible to other local users" in err
    assert SECRET not in line + out + err

    proc = _serve(["--data-dir", str(tmp_path / "d2")], _env())
    err = _failed(proc)
    assert proc.returncode == 2
    assert "no admin secret: pass --secret-file FILE" in err


def test_an_empty_or_shared_secret_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    proc = _serve(["--data-dir", str(tmp_path / "d"), "--secret-file", str(empty)], _env())
    err = _failed(proc)
    assert proc.returncode == 1
    assert "the secret file is empty" in err

    shared = tmp_path / "shared"
    shared.write_text(SECRET + "\n")
    shared.chmod(0o644)
    proc = _serve(["--data-dir", str(tmp_path / "d3"), "--secret-file", str(shared)], _env())
    assert proc.stdout is not None
    line = proc.stdout.readline()
    out, err = _stop(proc)
    assert "serving" in line
    assert f"chmod 600 {shared}" in err
    assert SECRET not in line + out + err
