"""Small UDP tools to observe NAT behaviour inside lab hosts (``python -m`` entry point).

Run them with :meth:`Host.python <tunnelmesh.testing.lab.Host.python>`::

    echo = server.python("-m", "tunnelmesh.testing.natprobe", "echo", server.address, "0",
                         stdout=subprocess.PIPE)
    port = int(wait_for_line(echo, "ready").split()[1])

``echo ADDR PORT``
    Binds UDP ``ADDR:PORT`` (0: any free port), prints ``ready <port>``, then answers every
    datagram with the sender's address as the server saw it, ``<ip>:<port>`` (the NAT mapping).
    With ``send IP:PORT`` in the datagram it also sends ``hello`` from the same socket to that
    address (to test filtering from a known, already-contacted server port).

``probe SERVER [SERVER ...]``
    Binds a UDP socket on port 0, asks each ``IP:PORT`` echo server for its mapping, prints one
    line ``mapped <server> <ip>:<port>`` per server, then ``ready <local port>``, then prints
    ``recv <ip>:<port> <text>`` for every datagram that arrives afterwards, until ``--wait``
    seconds pass (default 10) or stdin is closed. A ``map`` line on stdin asks the first server
    again (its answer arrives as a ``recv`` line): a marker to order unsolicited datagrams.

``send IP:PORT TEXT``
    Sends one datagram ``TEXT`` from a fresh socket and exits (``--count`` repeats it).
"""

from __future__ import annotations

import argparse
import select
import socket
import sys
import time

__all__ = ["main"]


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def _echo(bind: str, port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((bind, port))
    print("ready", sock.getsockname()[1], flush=True)
    while True:
        data, peer = sock.recvfrom(2048)
        sock.sendto(f"{peer[0]}:{peer[1]}".encode(), peer)
        text = data.decode(errors="replace")
        if text.startswith("send "):
            sock.sendto(b"hello", _addr(text[5:].strip()))


def _probe(servers: list[str], wait: float) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", 0))
    sock.settimeout(2.0)
    for server in servers:
        addr = _addr(server)
        for _ in range(5):  # UDP may be lost under impairment: retry a bounded number of times
            sock.sendto(b"map", addr)
            try:
                data, peer = sock.recvfrom(2048)
            except TimeoutError:
                continue
            if peer == addr:
                print("mapped", server, data.decode(), flush=True)
                break
        else:
            print("mapped", server, "none", flush=True)
    print("ready", sock.getsockname()[1], flush=True)
    deadline = time.monotonic() + wait
    sock.setblocking(False)
    while (left := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([sock, sys.stdin], [], [], left)
        if sys.stdin in readable:
            line = sys.stdin.readline()
            if not line:
                return
            if line.strip() == "map":  # ask the first server again; its answer arrives as recv
                sock.sendto(b"map", _addr(servers[0]))
        if sock in readable:
            data, peer = sock.recvfrom(2048)
            print("recv", f"{peer[0]}:{peer[1]}", data.decode(errors="replace"), flush=True)


def _send(target: str, text: str, count: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for _ in range(count):
        sock.sendto(text.encode(), _addr(target))
    sock.close()


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m tunnelmesh.testing.natprobe")
    sub = parser.add_subparsers(dest="cmd", required=True)
    echo = sub.add_parser("echo")
    echo.add_argument("bind")
    echo.add_argument("port", type=int)
    probe = sub.add_parser("probe")
    probe.add_argument("servers", nargs="+")
    probe.add_argument("--wait", type=float, default=10.0)
    send = sub.add_parser("send")
    send.add_argument("target")
    send.add_argument("text")
    send.add_argument("--count", type=int, default=1)
    args = parser.parse_args(argv)
    if args.cmd == "echo":
        _echo(args.bind, args.port)
    elif args.cmd == "probe":
        _probe(args.servers, args.wait)
    else:
        _send(args.target, args.text, args.count)


if __name__ == "__main__":
    main()
