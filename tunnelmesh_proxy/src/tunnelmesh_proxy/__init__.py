"""tunnelmesh_proxy: a header-routed HTTP/1.1 reverse proxy for workspaces and mesh peers.

One proxy port reaches many identical services that run on the same port in different
workspaces, each bound to its own loopback IP (``127.18.X.Y``), or on other mesh peers. The
upstream is chosen per request by routing rules (:class:`tunnelmesh.abc.ProxyRule`); the built-in
ones read ``X-Cmux-Port-Internal``, ``X-Cmux-Workspace-Internal``, a ``<workspace>-<port>.localhost``
Host and ``X-Tunnelmesh-Peer``.
"""

from __future__ import annotations

__all__: list[str] = []
