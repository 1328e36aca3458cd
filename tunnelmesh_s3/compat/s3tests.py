"""Run a chosen list of ceph's s3-tests cases against ``tunnelmesh s3 serve`` on loopback.

    uv run python tunnelmesh_s3/compat/s3tests.py --s3-tests CHECKOUT [--cases FILE] [-- PYTEST ARGS]

ceph/s3-tests is the suite Ceph RGW and other S3 servers check their compatibility with. Its
code is not part of this repository: CHECKOUT is a clone of it (a work tree or a bare git
directory). This script

1. exports CHECKOUT's HEAD (``git archive``; a plain directory is copied) into a temporary
   directory, so the checkout is never modified;
2. makes a virtualenv there and installs the suite's ``requirements.txt`` from PyPI (``uv`` when
   it is on PATH, else ``venv`` + ``pip``; ``--venv DIR`` reuses one between runs);
3. starts ``tunnelmesh s3 serve`` on 127.0.0.1 (a free port, its data in the temporary
   directory) with an admin credential, and issues the suite's "alt" and "tenant" users
   (``tunnelmesh s3 credentials --for``);
4. writes the suite's config file and runs the cases listed in FILE (default: the
   ``s3tests-cases.txt`` beside this script; one ``file::test`` per line, ``#`` comments) with
   pytest, then prints ``N passed, N failed`` and exits non-zero when any case did not pass;
5. stops the server (by its PID) and removes the temporary directory (``--keep`` keeps it).

Only loopback traffic: the suite talks to the server it was given and to nothing else.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_CASES = HERE / "s3tests-cases.txt"
ADMIN_KEY = "AKS3TESTSADMIN"
START_TIMEOUT = 60.0


def read_cases(path: Path) -> list[str]:
    """The case ids of a case list: one per line, blank lines and ``#`` comments ignored."""
    cases = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            cases.append(line)
    if len(set(cases)) != len(cases):
        dupes = sorted({c for c in cases if cases.count(c) > 1})
        raise SystemExit(f"{path}: cases listed twice: {', '.join(dupes)}")
    return cases


def export(checkout: Path, dest: Path) -> None:
    """HEAD of a git checkout (work tree or bare) into ``dest``; a plain directory is copied."""
    git_dir = checkout / ".git" if (checkout / ".git").exists() else checkout
    if (git_dir / "HEAD").is_file() and (git_dir / "objects").is_dir():
        archive = dest.parent / "s3-tests.tar"
        with open(archive, "wb") as out:
            subprocess.run(
                ["git", f"--git-dir={git_dir}", "archive", "--format=tar", "HEAD"],
                stdout=out,
                check=True,
            )
        dest.mkdir()
        with tarfile.open(archive) as tar:
            tar.extractall(dest, filter="data")
        archive.unlink()
    else:
        shutil.copytree(checkout, dest, ignore=shutil.ignore_patterns(".git", ".tox", "*.pyc"))
    if not (dest / "s3tests").is_dir() or not (dest / "requirements.txt").is_file():
        raise SystemExit(f"{checkout} does not look like a checkout of ceph/s3-tests")


def make_venv(venv: Path, suite: Path) -> Path:
    """A virtualenv with the suite's requirements; returns its python."""
    python = venv / "bin" / "python"
    uv = shutil.which("uv")
    if not python.exists():
        if uv:
            subprocess.run(
                [uv, "venv", "--quiet", "--python", sys.executable, str(venv)], check=True
            )
        else:
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    requirements = str(suite / "requirements.txt")
    if uv:
        cmd = [uv, "pip", "install", "--quiet", "--python", str(python), "-r", requirements]
    else:
        cmd = [str(python), "-m", "pip", "install", "--quiet", "-r", requirements]
    subprocess.run(cmd, check=True)
    return python


class Server:
    """``tunnelmesh s3 serve`` as a child process on 127.0.0.1, stopped by its PID."""

    def __init__(self, data: Path, secret: str, home: Path) -> None:
        self.env = dict(
            os.environ,
            TUNNELMESH_HOME=str(home),
            TUNNELMESH_S3_ACCESS_KEY=ADMIN_KEY,
            TUNNELMESH_S3_SECRET_KEY=secret,
        )
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tunnelmesh",
                "-l",
                "warning",
                "s3",
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                str(data),
            ],
            stdout=subprocess.PIPE,
            text=True,
            env=self.env,
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT
        line = ""
        while time.monotonic() < deadline and self.proc.poll() is None:
            line = self.proc.stdout.readline()
            if m := re.search(r"127\.0\.0\.1:(\d+)", line):
                self.port = int(m.group(1))
                break
        else:
            self.stop()
            raise SystemExit(f"tunnelmesh s3 serve did not start: {line.strip()!r}")
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def issue(self, name: str) -> dict[str, str]:
        """A new credential for ``name`` (not an admin)."""
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "tunnelmesh",
                "s3",
                "credentials",
                "--endpoint-url",
                self.endpoint,
                "--for",
                name,
                "--json",
            ],
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        cred: dict[str, str] = json.loads(out.stdout)
        return cred

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def write_config(
    path: Path, port: int, secret: str, alt: dict[str, str], tenant: dict[str, str]
) -> None:
    """The suite's config: this server, its admin as "main", the issued users as "alt" and
    "tenant"; the IAM sections the suite insists on get credentials that exist nowhere."""

    def section(title: str, name: str, ak: str, sk: str, extra: str = "") -> str:
        return (
            f"[{title}]\ndisplay_name = {name}\nuser_id = {name}\nemail = {name}@example.com\n"
            f"access_key = {ak}\nsecret_key = {sk}\n{extra}\n"
        )

    path.write_text(
        f"[DEFAULT]\nhost = 127.0.0.1\nport = {port}\nis_secure = False\nssl_verify = False\n\n"
        "[fixtures]\nbucket prefix = s3t-{random}-\n\n"
        # the server's admin credential belongs to the principal "admin"
        + section("s3 main", "admin", ADMIN_KEY, secret, "api_name = \n")
        + section("s3 alt", "alt", alt["access_key"], alt["secret_key"])
        + section("s3 tenant", "tenant", tenant["access_key"], tenant["secret_key"], "tenant = t\n")
        + section("iam", "iam", "AKUNUSEDIAM", "unused")
        + section("iam root", "root", "AKUNUSEDROOT", "unused")
        + section("iam alt root", "altroot", "AKUNUSEDALTROOT", "unused")
    )


def summarize(junit: Path) -> tuple[int, int, int, list[str]]:
    """(passed, failed, skipped, ids that did not pass) from pytest's JUnit XML."""
    passed = failed = skipped = 0
    bad: list[str] = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        kinds = {child.tag for child in case}
        if kinds & {"failure", "error"}:
            failed += 1
            bad.append(name)
        elif "skipped" in kinds:
            skipped += 1
            bad.append(name + " (skipped)")
        else:
            passed += 1
    return passed, failed, skipped, bad


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--s3-tests", type=Path, required=True, help="a checkout of ceph/s3-tests")
    parser.add_argument("--cases", type=Path, default=DEFAULT_CASES, help="the case list")
    parser.add_argument("--venv", type=Path, help="reuse (or create) the suite's venv here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("pytest_args", nargs="*", help="more pytest arguments (after --)")
    args = parser.parse_args(argv)
    cases = read_cases(args.cases)
    work = Path(tempfile.mkdtemp(prefix="tm-s3tests-"))
    server: Server | None = None
    try:
        suite = work / "s3-tests"
        export(args.s3_tests.expanduser().resolve(), suite)
        python = make_venv((args.venv or work / "venv").expanduser().resolve(), suite)
        secret = secrets.token_urlsafe(24)
        home = work / "home"
        home.mkdir(mode=0o700)
        server = Server(work / "data", secret, home)
        alt, tenant = server.issue("alt"), server.issue("tenant")
        conf = work / "s3tests.conf"
        write_config(conf, server.port, secret, alt, tenant)
        junit = work / "junit.xml"
        print(f"running {len(cases)} s3-tests cases against {server.endpoint}", flush=True)
        subprocess.run(
            [
                str(python),
                "-m",
                "pytest",
                "-p",
                "no:cacheprovider",
                "-q",
                "-o",
                "addopts=",
                f"--junitxml={junit}",
                *args.pytest_args,
                *cases,
            ],
            cwd=suite,
            env=dict(os.environ, S3TEST_CONF=str(conf)),
            check=False,
        )
        passed, failed, skipped, bad = summarize(junit)
        for name in bad:
            print(f"NOT PASSED: {name}")
        print(
            f"s3-tests: {passed} passed, {failed} failed, {skipped} skipped of {len(cases)} cases"
        )
        return 0 if passed == len(cases) else 1
    finally:
        if server is not None:
            server.stop()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
