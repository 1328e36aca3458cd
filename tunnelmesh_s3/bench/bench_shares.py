"""Shares through the mesh: 256 MiB sequential write and read over NFS, WebDAV and S3, beside
the raw disk and the mesh's own TCP throughput, in one bounded run (root: namespace lab).

    uv run python tunnelmesh_s3/bench/bench_shares.py [--size-mib 256] [--dir DIR]

Builds a namespace lab (:mod:`tunnelmesh.testing.lab`) with a coordinator that serves S3,
WebDAV and NFS on its mesh IP (``s3: {enabled: true}`` and ``join_mesh``) and one peer; every
client runs in the peer's namespace, so every byte crosses the real mesh (TUN, WireGuard
protocol over UDP). One file of random bytes, written and read once per protocol:

* NFS: ``nfs-cp`` from Debian libnfs-utils (NFSv3 over TCP, port 2049), to the share and back
  to a file in ``/dev/shm`` (it cannot write ``/dev/null``);
* WebDAV: one streamed ``PUT`` and one ``GET`` (Python ``http.client``, 1 MiB buffers);
* S3: one ``PUT`` (``UNSIGNED-PAYLOAD``, SigV4 headers) and one ``GET`` over HTTPS with the
  peer's own credential;
* anchors: the raw speed of the coordinator's data directory (write+fsync, read, same size),
  and ``iperf3`` TCP through the mesh (one stream, each direction, 5 s).

Reads come from the page cache where the data fits in memory (nothing drops caches). Prints
figures; asserts nothing about speed. Needs root, iperf3 and libnfs-utils.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_s3 import raw_bench
from tunnelmesh.testing.lab import Lab
from tunnelmesh.testing.mesh import MeshLab

MiB = 1024 * 1024

# Runs in the peer's namespace. argv[1]: JSON {ip, file, size, s3: {ak, sk, region, ca}}.
CLIENT = r"""
import hashlib, http.client, json, os, ssl, subprocess, sys, time
from tunnelmesh_s3 import sigv4
a = json.loads(sys.argv[1])
ip, path, size = a["ip"], a["file"], a["size"]
MiB = 1 << 20
out = {}

def timed(fn):
    t = time.perf_counter()
    fn()
    return size / MiB / (time.perf_counter() - t)

def http_put(conn, url, headers):
    with open(path, "rb") as f:
        conn.request("PUT", url, body=f, headers={"Content-Length": str(size), **headers})
        r = conn.getresponse(); r.read()
        assert r.status in (200, 201, 204), (r.status, url)

def http_get(conn, url, headers):
    conn.request("GET", url, headers=headers)
    r = conn.getresponse()
    assert r.status == 200, (r.status, url)
    n = 0
    while chunk := r.read(MiB):
        n += len(chunk)
    assert n == size, n

# NFS
nfs = f"nfs://{ip}/bench/nfs.bin?nfsport=2049&mountport=2049"
def nfs_cp(src, dst):
    p = subprocess.run(["nfs-cp", src, dst], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
back = f"/dev/shm/tm-shares-bench-{os.getpid()}"  # nfs-cp cannot write /dev/null; tmpfs
try:
    out["NFS (nfs-cp)"] = (timed(lambda: nfs_cp(path, nfs)), timed(lambda: nfs_cp(nfs, back)))
finally:
    if os.path.exists(back):
        os.unlink(back)

# WebDAV
dav = http.client.HTTPConnection(ip, 8080, timeout=600, blocksize=MiB)
out["WebDAV (HTTP)"] = (timed(lambda: http_put(dav, "/bench/dav.bin", {})),
                        timed(lambda: http_get(dav, "/bench/dav.bin", {})))

# S3
s3 = a["s3"]
ctx = ssl.create_default_context(cafile=s3["ca"])
conn = http.client.HTTPSConnection(ip, 9000, timeout=600, context=ctx, blocksize=MiB)
def signed(method, url):
    h = {"host": f"{ip}:9000"}
    sigv4.sign_headers(method, url, "", h, access_key=s3["ak"], secret=s3["sk"],
                       region=s3["region"], now=time.time())
    del h["host"]
    return h
out["S3 (HTTPS)"] = (timed(lambda: http_put(conn, "/bench/s3.bin", signed("PUT", "/bench/s3.bin"))),
                     timed(lambda: http_get(conn, "/bench/s3.bin", signed("GET", "/bench/s3.bin"))))
print(json.dumps(out))
"""


def _tm(mesh: MeshLab, name: str, *args: str) -> str:
    peer = mesh.peers[name]
    proc = peer.host.run(
        [sys.executable, "-m", "tunnelmesh", *args],
        check=False,
        timeout=60,
        env=mesh.env(peer.home),
    )
    if proc.returncode != 0:
        raise SystemExit(f"tunnelmesh {' '.join(args)} failed: {proc.stderr or proc.stdout}")
    return proc.stdout


def _iperf(mesh: MeshLab, coord_ip: str) -> tuple[float, float]:
    """Mesh TCP MiB/s (peer -> coordinator, then reverse), one stream each, 5 s."""
    server = mesh.coord_host.popen(
        ["iperf3", "-s", "-1", "-B", coord_ip, "-p", "5201"], stdout=subprocess.DEVNULL
    )
    try:
        mesh.coord_host.wait_listening(coord_ip, 5201)
        up = json.loads(mesh.peers["bench"].host.run(
            ["iperf3", "-c", coord_ip, "-p", "5201", "-t", "5", "-J"], timeout=60).stdout)  # fmt: skip
    finally:
        server.wait(30)
    server = mesh.coord_host.popen(
        ["iperf3", "-s", "-1", "-B", coord_ip, "-p", "5201"], stdout=subprocess.DEVNULL
    )
    try:
        mesh.coord_host.wait_listening(coord_ip, 5201)
        down = json.loads(mesh.peers["bench"].host.run(
            ["iperf3", "-c", coord_ip, "-p", "5201", "-t", "5", "-R", "-J"], timeout=60).stdout)  # fmt: skip
    finally:
        server.wait(30)

    def rate(d: dict) -> float:  # type: ignore[type-arg]
        return float(d["end"]["sum_received"]["bits_per_second"]) / 8 / MiB

    return rate(up), rate(down)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mib", type=int, default=256, help="the file's size (MiB)")
    ap.add_argument("--dir", type=Path, help="where the lab's files go (default: a temp dir)")
    args = ap.parse_args()
    for tool in ("iperf3", "nfs-cp"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (Debian: iperf3, libnfs-utils)")
    size = args.size_mib * MiB
    work = Path(tempfile.mkdtemp(prefix="tm-shares-bench-", dir=args.dir))
    work.chmod(0o700)
    try:
        raw_w, raw_r = raw_bench(work / "raw", size, 1, 1)
        with Lab() as lab:
            mesh = MeshLab(lab, work)
            try:
                with mesh.server_config.open("a") as f:
                    f.write(
                        "s3:\n  enabled: true\n"
                        "join_mesh:\n  name: coord\n"
                        f'  private_key: "{work / "coord-key"}"\n'
                        "  tun:\n    name: tm0\n"
                        '  dns:\n    listen: "127.0.0.53:53"\n    system: "off"\n'
                        "    forward: false\n"
                    )
                mesh.add_peer("bench")
                coord = mesh.start_coordinator()
                coord_ip = coord.wait_line(r"mesh peer coord: mesh IP (\S+) ", 60).group(1)
                mesh.start_peer("bench")
                mesh.wait_links(["bench"], 30)
                deadline = time.monotonic() + 30
                while True:  # the coordinator's side of the link, and its listeners
                    ping = mesh.peers["bench"].host.run(
                        ["ping", "-c1", "-W1", coord_ip], check=False, timeout=10
                    )
                    if ping.returncode == 0 or time.monotonic() > deadline:
                        break
                _tm(mesh, "bench", "share", "create", "bench")
                env = dict(
                    line.removeprefix("export ").split("=", 1)
                    for line in _tm(
                        mesh, "bench", "s3", "credentials", "--format", "env"
                    ).splitlines()
                    if line.startswith("export ")
                )
                data = work / "bench" / "data.bin"
                with open(data, "wb") as f:
                    for _ in range(args.size_mib):
                        f.write(os.urandom(MiB))
                peer = mesh.peers["bench"]
                spec = {
                    "ip": coord_ip,
                    "file": str(data),
                    "size": size,
                    "s3": {
                        "ak": env["AWS_ACCESS_KEY_ID"],
                        "sk": env["AWS_SECRET_ACCESS_KEY"],
                        "region": env["AWS_DEFAULT_REGION"],
                        "ca": env["AWS_CA_BUNDLE"],
                    },
                }
                proc = peer.host.run(
                    [sys.executable, "-c", CLIENT, json.dumps(spec)],
                    check=False,
                    timeout=1800,
                    env=mesh.env(peer.home),
                )
                if proc.returncode != 0:
                    raise SystemExit(f"the client failed: {proc.stderr[-2000:]}")
                results = json.loads(proc.stdout.strip().splitlines()[-1])
                up, down = _iperf(mesh, coord_ip)
            finally:
                mesh.close()
        load = os.getloadavg()[0]
        print(
            f"shares through the mesh, {args.size_mib} MiB sequential, one run, "
            f"{os.cpu_count()} CPUs, load {load:.1f}"
        )
        print(f"{'path':<28} {'write MiB/s':>12} {'read MiB/s':>12}")
        rows = [
            *results.items(),
            ("mesh TCP (iperf3, anchor)", (up, down)),
            ("raw disk (write+fsync/read)", (size / MiB / raw_w, size / MiB / raw_r)),
        ]
        for label, (w, r) in rows:
            print(f"{label:<28} {w:>12.1f} {r:>12.1f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
