"""tunnelmesh-wg: a WireGuard concentrator peer that lets standard WireGuard clients (the
official phone and desktop apps, wg-quick) reach the whole mesh, and the ``tunnelmesh wg``
commands that manage those clients. See README.md."""
