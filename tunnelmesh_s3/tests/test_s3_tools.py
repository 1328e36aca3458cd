"""The AWS CLI and rclone against the standalone server over loopback."""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from tunnelmesh_s3.server import Running, ServerThread

AK, SK = "AKTOOLSTEST", "tools-secret"
MiB = 1024 * 1024
AWS = Path(sys.executable).parent / "aws"
RCLONE = shutil.which("rclone")


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with ServerThread(tmp_path_factory.mktemp("s3"), access_key=AK, secret_key=SK) as r:
        yield r


def make_tree(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "small.txt").write_text("hello\n")
    (root / "nested" / "deeper").mkdir(parents=True, exist_ok=True)
    (root / "nested" / "a b+c.txt").write_text("spaces and plus\n")
    (root / "nested" / "deeper" / "ünïcode.bin").write_bytes(os.urandom(1000))
    (root / "big.bin").write_bytes(os.urandom(12 * MiB + 123))  # multipart for both tools
    (root / "empty").write_bytes(b"")
    return root


def same_tree(a: Path, b: Path) -> bool:
    cmp = filecmp.dircmp(a, b)

    def walk(c: filecmp.dircmp[str]) -> bool:
        if c.left_only or c.right_only or c.diff_files or c.funny_files:
            return False
        _, mismatch, errors = filecmp.cmpfiles(c.left, c.right, c.common_files, shallow=False)
        return not mismatch and not errors and all(walk(s) for s in c.subdirs.values())

    return walk(cmp)


# --- AWS CLI ---------------------------------------------------------------------------------


def aws(running: Running, tmp: Path, *args: str) -> str:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp),
        "AWS_ACCESS_KEY_ID": AK,
        "AWS_SECRET_ACCESS_KEY": SK,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(tmp / "aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    proc = subprocess.run(
        [str(AWS), "--endpoint-url", running.endpoint, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"aws {' '.join(args)}: {proc.stderr}"
    return proc.stdout


@pytest.mark.skipif(not AWS.exists(), reason="the AWS CLI (test extra: awscli) is not installed")
def test_aws_cli(running: Running, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    aws(running, tmp_path, "s3", "mb", "s3://cli-bucket")
    aws(running, tmp_path, "s3", "cp", str(src / "big.bin"), "s3://cli-bucket/one/big.bin")
    aws(running, tmp_path, "s3", "cp", "s3://cli-bucket/one/big.bin", str(tmp_path / "big.copy"))
    assert filecmp.cmp(src / "big.bin", tmp_path / "big.copy", shallow=False)
    aws(running, tmp_path, "s3", "sync", str(src), "s3://cli-bucket/tree")
    listing = aws(running, tmp_path, "s3", "ls", "--recursive", "s3://cli-bucket/tree/")
    assert "tree/nested/deeper/ünïcode.bin" in listing and "tree/nested/a b+c.txt" in listing
    # a second sync uploads nothing
    assert aws(running, tmp_path, "s3", "sync", str(src), "s3://cli-bucket/tree") == ""
    aws(running, tmp_path, "s3", "sync", "s3://cli-bucket/tree", str(tmp_path / "back"))
    assert same_tree(src, tmp_path / "back")
    # server-side copy of a multipart object (UploadPartCopy)
    aws(running, tmp_path, "s3", "cp", "s3://cli-bucket/one/big.bin", "s3://cli-bucket/two/big.bin")
    head = aws(
        running, tmp_path, "s3api", "head-object", "--bucket", "cli-bucket", "--key", "two/big.bin"
    )
    assert f'"ContentLength": {12 * MiB + 123}' in head
    out = aws(
        running,
        tmp_path,
        "s3api",
        "list-objects-v2",
        "--bucket",
        "cli-bucket",
        "--prefix",
        "tree/",
        "--delimiter",
        "/",
        "--query",
        "CommonPrefixes[].Prefix",
        "--output",
        "text",
    )
    assert out.split() == ["tree/nested/"]
    aws(
        running,
        tmp_path,
        "s3api",
        "put-object",
        "--bucket",
        "cli-bucket",
        "--key",
        "api.txt",
        "--body",
        str(src / "small.txt"),
        "--metadata",
        "origin=aws-cli",
    )
    meta = aws(
        running, tmp_path, "s3api", "head-object", "--bucket", "cli-bucket", "--key", "api.txt"
    )
    assert '"origin": "aws-cli"' in meta
    aws(running, tmp_path, "s3", "rm", "--recursive", "s3://cli-bucket/")
    aws(running, tmp_path, "s3", "rb", "s3://cli-bucket")
    assert "cli-bucket" not in aws(running, tmp_path, "s3", "ls")


# --- rclone ----------------------------------------------------------------------------------


def rclone(running: Running, tmp: Path, *args: str) -> str:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp),
        "RCLONE_CONFIG": str(tmp / "rclone.conf"),
        "RCLONE_CONFIG_TM_TYPE": "s3",
        "RCLONE_CONFIG_TM_PROVIDER": "Other",
        "RCLONE_CONFIG_TM_ENDPOINT": running.endpoint,
        "RCLONE_CONFIG_TM_REGION": "us-east-1",
        "RCLONE_CONFIG_TM_ACCESS_KEY_ID": AK,
        "RCLONE_CONFIG_TM_SECRET_ACCESS_KEY": SK,
    }
    proc = subprocess.run(
        [
            str(RCLONE),
            "--s3-upload-cutoff",
            "5M",
            "--s3-chunk-size",
            "5M",
            "--retries",
            "1",
            "--low-level-retries",
            "1",
            *args,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"rclone {' '.join(args)}: {proc.stderr}"
    return proc.stdout + proc.stderr


@pytest.mark.skipif(RCLONE is None, reason="rclone is not installed (apt-get install rclone)")
def test_rclone(running: Running, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    rclone(running, tmp_path, "mkdir", "tm:rclone-bucket")
    rclone(running, tmp_path, "copy", str(src), "tm:rclone-bucket/copy")
    rclone(running, tmp_path, "check", str(src), "tm:rclone-bucket/copy")
    rclone(running, tmp_path, "sync", str(src), "tm:rclone-bucket/sync")
    rclone(running, tmp_path, "check", str(src), "tm:rclone-bucket/sync")
    # change the source: sync makes the remote match again, deletions included
    (src / "small.txt").write_text("changed\n")
    (src / "nested" / "a b+c.txt").unlink()
    (src / "new.txt").write_text("new\n")
    rclone(running, tmp_path, "sync", str(src), "tm:rclone-bucket/sync")
    rclone(running, tmp_path, "check", str(src), "tm:rclone-bucket/sync")
    rclone(running, tmp_path, "copy", "tm:rclone-bucket/sync", str(tmp_path / "back"))
    assert same_tree(src, tmp_path / "back")
    listing = rclone(running, tmp_path, "lsf", "-R", "tm:rclone-bucket/sync")
    assert "nested/deeper/ünïcode.bin" in listing and "a b+c.txt" not in listing
    rclone(running, tmp_path, "purge", "tm:rclone-bucket")
