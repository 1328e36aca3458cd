"""Throughput and round-trip time through each transport, between the same two lab hosts, in
one run, beside OpenSSH port forwarding (the anchor for ssh) and the raw lab link.

    sudo .venv/bin/python tunnelmesh_relay/bench/bench_transports.py [--seconds 5] [--only udp,ssh]

Topology: hosts ``a``, ``b`` and ``coord`` on one lab switch (veth pairs through a bridge).
``tunnelmesh serve`` (only the relay plugin loaded) runs on ``coord``; for each transport a
``tunnelmesh_relay.labpeer`` pair (fresh identities, its own TUN devices and mesh IPs) carries
the traffic: udp and ssh straight from a to b, relay a -> coord -> b.

Per path: iperf3 TCP, one stream, a -> b and b -> a (``-R``), ``--seconds`` each; RTT as the
median of 200 TCP round trips of 64 bytes (a small echo server on b), and ICMP ping where the
path is IP (not through the OpenSSH forward, which only carries TCP).

Needs root, iproute2, nftables, iperf3, openssh-server, openssh-client; the runs are bounded
(about 15 s per path). Only lab namespaces are involved.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tunnelmesh.testing import lab_unavailable_reason
from tunnelmesh.testing.lab import Host, Lab, wait_for_line

TOKEN = "bench-token-0123456789abcdef0123"
MAIN = "import sys; from tunnelmesh.cli import main; sys.exit(main())"
ECHO_SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(4); print("echo ready", flush=True)
while True:
    c, _ = s.accept(); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while (d := c.recv(65536)):
        c.sendall(d)
    c.close()
"""
ECHO_CLIENT = """
import socket, statistics, sys, time
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
msg, rtts = b"x" * 64, []
for _ in range(220):
    t = time.perf_counter(); c.sendall(msg); got = b""
    while len(got) < 64:
        got += c.recv(64 - len(got))
    rtts.append((time.perf_counter() - t) * 1000)
print(statistics.median(rtts[20:]))
"""


def iperf(client: Host, target: str, port: int, seconds: int, reverse: bool) -> float:
    args = ["iperf3", "-c", target, "-p", str(port), "-t", str(seconds), "-J"]
    args += ["--connect-timeout", "5000"] + (["-R"] if reverse else [])
    out = client.run(args, timeout=seconds + 30, check=False).stdout
    result = json.loads(out)
    if "error" in result:  # e.g. a connect timeout on a loaded machine: one figure lost, not all
        print(f"  iperf3 {target}:{port}{' -R' if reverse else ''}: {result['error']}", flush=True)
        return float("nan")
    return float(result["end"]["sum_received"]["bits_per_second"]) / 1e9


def echo_rtt(client: Host, target: str, port: int) -> float:
    out = client.run([sys.executable, "-c", ECHO_CLIENT, target, str(port)], timeout=60).stdout
    return float(out.strip())


def ping_ms(client: Host, target: str) -> float | None:
    proc = client.run(
        ["ping", "-n", "-q", "-c", "10", "-i", "0.2", target], check=False, timeout=30
    )
    m = re.search(r"= [\d.]+/([\d.]+)/", proc.stdout)
    return float(m.group(1)) if m else None


class Bench:
    def __init__(self, lab: Lab, work: Path, seconds: int, coalesce: bool) -> None:
        self.lab, self.work, self.seconds, self.coalesce = lab, work, seconds, coalesce
        self.coord = lab.add_host("coord")
        self.a = lab.add_host("a")
        self.b = lab.add_host("b")
        self.rows: list[tuple[str, float, float, float, float | None]] = []

    def measure(self, name: str, target: str, iperf_port: int, echo_port: int, ping: bool) -> None:
        b = self.b
        servers = [
            b.popen(
                ["iperf3", "-s", "-B", target, "-p", str(iperf_port)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            ),
            b.python("-c", ECHO_SERVER, target, str(echo_port), stdout=subprocess.PIPE),
        ]
        try:
            wait_for_line(servers[1], "echo ready", timeout=10)
            time.sleep(0.3)  # iperf3 has no readiness line with stdout closed; it binds at once
            rtt = echo_rtt(self.a, target, echo_port)
            fwd = iperf(self.a, target, iperf_port, self.seconds, reverse=False)
            rev = iperf(self.a, target, iperf_port, self.seconds, reverse=True)
            pms = ping_ms(self.a, target) if ping else None
        finally:
            for p in servers:
                p.terminate()
                p.wait(timeout=10)
        self.rows.append((name, fwd, rev, rtt, pms))
        print(f"  {name}: {fwd:.3f} / {rev:.3f} Gbit/s, echo {rtt:.3f} ms, ping {pms}", flush=True)

    def coordinator(self) -> None:
        cfg = self.work / "server.yaml"
        cfg.write_text(
            f'auth_token: "{TOKEN}"\n'
            f'listen: "{self.coord.address}:8443"\n'
            f'stun_listen: "{self.coord.address}:3478"\n'
            f'data_dir: "{self.work / "state"}"\n'
            "relay:\n  rate_bytes_per_second: 0\n  queue: 1024\n"
        )
        env = dict(
            os.environ, TUNNELMESH_HOME=str(self.work / "home"), TUNNELMESH_LOAD_PLUGINS="relay"
        )
        env.pop("TUNNELMESH_CONFIG", None)
        log = open(self.work / "serve.log", "w")  # noqa: SIM115 - kept by the process
        proc = self.coord.python(
            "-c", MAIN, "serve", "-c", str(cfg), env=env, stdout=subprocess.PIPE, stderr=log
        )
        log.close()
        wait_for_line(proc, "coordinator listening", timeout=30)
        self.server = f"https://{self.coord.address}:8443"

    def mesh(self, transport: str, n: int) -> None:
        port = 51820 + n
        common = ["--server", self.server, "--token", TOKEN, "--transport", transport]
        common += ["--listen", f"0.0.0.0:{port}", "--tun", f"tm{n}"]
        if self.coalesce:
            common.append("--tun-coalesce")
        pb = self.b.python(
            "-m", "tunnelmesh_relay.labpeer", *common, "--name", f"b{n}", "--peer", f"a{n}",
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        dial = "relay" if transport == "relay" else f"{self.b.address}:{port}"
        pa = self.a.python(
            "-m", "tunnelmesh_relay.labpeer", *common, "--name", f"a{n}", "--peer", f"b{n}",
            "--dial", dial, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            line = wait_for_line(pa, "labpeer ready", timeout=60)
            wait_for_line(pb, "labpeer ready", timeout=30)
            target = line.split()[3]
            label = {"udp": "udp (WireGuard/UDP)", "ssh": "ssh (asyncssh)"}.get(
                transport, "relay (WireGuard via coordinator WebSocket)"
            )
            self.measure(label, target, 5201, 7007, ping=True)
        finally:
            for p in (pa, pb):
                p.terminate()
                p.wait(timeout=20)

    def openssh_anchor(self) -> None:
        sshd = shutil.which("sshd") or "/usr/sbin/sshd"
        if not Path(sshd).exists() or shutil.which("ssh") is None:
            print("  OpenSSH -L: skipped (needs openssh-server and openssh-client)")
            return
        w = self.work / "ssh"
        w.mkdir()
        for key in ("host_key", "user_key"):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(w / key)], check=True
            )
        shutil.copy(w / "user_key.pub", w / "authorized_keys")
        (w / "sshd_config").write_text(
            f"ListenAddress {self.b.address}:2222\nHostKey {w / 'host_key'}\n"
            f"AuthorizedKeysFile {w / 'authorized_keys'}\nPermitRootLogin prohibit-password\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
            "StrictModes no\nAllowTcpForwarding yes\nPidFile none\n"
        )
        Path("/run/sshd").mkdir(exist_ok=True)
        d = self.b.popen(
            [sshd, "-D", "-e", "-f", str(w / "sshd_config")], stderr=subprocess.DEVNULL
        )
        try:
            self._wait_listening(self.b, 2222, d)
            for cipher in ("chacha20-poly1305@openssh.com", "aes128-gcm@openssh.com"):
                fwd = self.a.popen(
                    ["ssh", "-N", "-T", "-F", "/dev/null", "-c", cipher, "-o", "Compression=no",
                     "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                     "-o", "LogLevel=ERROR", "-o", "ExitOnForwardFailure=yes",
                     "-i", str(w / "user_key"), "-p", "2222",
                     "-L", "127.0.0.1:15201:127.0.0.1:5201", "-L", "127.0.0.1:17007:127.0.0.1:7007",
                     f"root@{self.b.address}"],
                    stderr=subprocess.DEVNULL,
                )  # fmt: skip
                try:
                    self._wait_listening(self.a, 15201, fwd)
                    self._measure_forward(f"OpenSSH -L ({cipher.split('@')[0]})")
                finally:
                    fwd.terminate()
                    fwd.wait(timeout=10)
        finally:
            d.terminate()
            d.wait(timeout=10)

    @staticmethod
    def _wait_listening(host: Host, port: int, proc: subprocess.Popen[str]) -> None:
        deadline = time.monotonic() + 15
        while "LISTEN" not in host.run(["ss", "-Hltn", f"sport = :{port}"]).stdout:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"nothing listens on port {port} in {host.name}")
            time.sleep(0.1)

    def _measure_forward(self, name: str) -> None:
        b = self.b
        servers = [
            b.popen(
                ["iperf3", "-s", "-B", "127.0.0.1", "-p", "5201"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            ),
            b.python("-c", ECHO_SERVER, "127.0.0.1", "7007", stdout=subprocess.PIPE),
        ]
        try:
            wait_for_line(servers[1], "echo ready", timeout=10)
            time.sleep(0.3)
            rtt = echo_rtt(self.a, "127.0.0.1", 17007)
            fwd = iperf(self.a, "127.0.0.1", 15201, self.seconds, reverse=False)
            rev = iperf(self.a, "127.0.0.1", 15201, self.seconds, reverse=True)
        finally:
            for p in servers:
                p.terminate()
                p.wait(timeout=10)
        self.rows.append((name, fwd, rev, rtt, None))
        print(f"  {name}: {fwd:.3f} / {rev:.3f} Gbit/s, echo {rtt:.3f} ms", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seconds", type=int, default=5, help="iperf3 time per direction (max 30)")
    p.add_argument("--only", default="raw,openssh,udp,ssh,relay", help="comma-separated paths")
    p.add_argument(
        "--tun-coalesce",
        action="store_true",
        help="every mesh peer writes received TCP segments to its TUN as GSO super-packets",
    )
    args = p.parse_args()
    reason = lab_unavailable_reason()
    if reason:
        raise SystemExit(f"bench_transports: {reason}")
    seconds = max(1, min(args.seconds, 30))
    only = set(args.only.split(","))
    load0 = os.getloadavg()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tm-bench-") as tmp, Lab() as lab:
        bench = Bench(lab, Path(tmp), seconds, args.tun_coalesce)
        print(f"lab up; load average {load0[0]:.2f} on {os.cpu_count()} cores", flush=True)
        if "raw" in only:
            bench.measure("raw lab link (veth + bridge)", bench.b.address, 5201, 7007, ping=True)
        if "openssh" in only:
            bench.openssh_anchor()
        if only & {"udp", "ssh", "relay"}:
            bench.coordinator()
        for n, transport in enumerate(("udp", "ssh", "relay")):
            if transport in only:
                bench.mesh(transport, n)
        rows = bench.rows
    load1 = os.getloadavg()
    print()
    print(f"{'path':<46} {'a->b Gbit/s':>11} {'b->a Gbit/s':>11} {'TCP RTT ms':>10} {'ping ms':>8}")
    for name, fwd, rev, rtt, pms in rows:
        ping = f"{pms:.3f}" if pms is not None else "-"
        print(f"{name:<46} {fwd:>11.3f} {rev:>11.3f} {rtt:>10.3f} {ping:>8}")
    offload = "TUN receive coalescing on" if args.tun_coalesce else "no TUN offload"
    print(
        f"\n{offload}; iperf3 TCP 1 stream, {seconds} s per direction; TCP RTT = median of 200 round trips "
        f"of 64 B; {time.monotonic() - started:.0f} s total; load average "
        f"{load0[0]:.2f} -> {load1[0]:.2f} on {os.cpu_count()} cores (shared machine: ratios "
        "matter more than absolute figures)"
    )


if __name__ == "__main__":
    main()
