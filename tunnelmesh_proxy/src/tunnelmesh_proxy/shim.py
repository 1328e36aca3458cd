"""Building and loading the LD_PRELOAD shim (``csrc/workspace_net.c``).

The C source ships inside the package and is compiled on demand with the system compiler, once
per source version: the library lands in ``$XDG_CACHE_HOME/tunnelmesh/proxy`` (default
``~/.cache``) under a name holding the source's hash, so an upgrade rebuilds it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from importlib import resources
from pathlib import Path

from tunnelmesh.errors import ConfigError

__all__ = ["SHIM_SOURCE", "build_shim", "default_shim_path", "shim_environment"]

SHIM_SOURCE = "workspace_net.c"


def _source() -> bytes:
    return resources.files("tunnelmesh_proxy").joinpath("csrc", SHIM_SOURCE).read_bytes()


def default_shim_path() -> Path:
    """Where ``shim build`` puts the library when no output is given."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    digest = hashlib.sha256(_source()).hexdigest()[:12]
    return Path(cache) / "tunnelmesh" / "proxy" / f"libworkspace_net-{digest}.so"


def build_shim(
    output: str | os.PathLike[str] | None, *, cc: str | None = None, force: bool = False
) -> Path:
    """Compile the shim (unless the library for this source exists) and return its path.

    ``cc`` defaults to ``$CC``, else ``cc``.

    Raises:
        ConfigError: no C compiler, or the compile failed (with the compiler's message).
    """
    target = Path(output) if output else default_shim_path()
    if target.exists() and not force and not output:
        return target
    cc = cc or os.environ.get("CC") or "cc"
    cc = cc or os.environ.get("CC") or "cc"
    compiler = shutil.which(cc)
    if compiler is None:
        raise ConfigError(
            f"no C compiler {cc!r} found: install gcc (apt-get install gcc) or set CC"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tm-shim-") as tmp:
        src = Path(tmp) / SHIM_SOURCE
        src.write_bytes(_source())
        lib = Path(tmp) / "lib.so"
        cmd = [
            compiler,
            "-shared",
            "-fPIC",
            "-O2",
            "-Wall",
            "-o",
            str(lib),
            str(src),
            "-ldl",
            "-lpthread",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if proc.returncode != 0:
            raise ConfigError(
                f"compiling the shim failed: {proc.stderr.strip() or proc.returncode}"
            )
        tmp_target = target.with_name(f".{target.name}.{os.getpid()}")
        shutil.copyfile(lib, tmp_target)
        os.replace(tmp_target, target)  # atomic: concurrent builds never see half a file
    return target


def shim_environment(
    env: Mapping[str, str], library: str | os.PathLike[str], workspace: str
) -> dict[str, str]:
    """``env`` with the shim preloaded (ahead of any other preload) and the workspace set."""
    out = dict(env)
    preload = [os.fspath(library)]
    if out.get("LD_PRELOAD"):
        preload.append(out["LD_PRELOAD"])
    out["LD_PRELOAD"] = " ".join(preload)
    out["CMUX_WORKSPACE_INTERNAL"] = workspace
    out.pop("CMUX_PRELOAD_DISABLE", None)
    return out
