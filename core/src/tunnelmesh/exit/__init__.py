"""Exit nodes: route a client's internet traffic through a peer (split tunnel).

* :mod:`tunnelmesh.exit.system` -- the operating-system side, usable alone: the client's split
  default routes and bypass routes (:class:`~tunnelmesh.exit.system.ExitRoutes`), the exit's
  forwarding and masquerade (:class:`~tunnelmesh.exit.system.ExitGateway`), each undone on
  exit and recovered after a crash;
* :mod:`tunnelmesh.exit.service` -- what the running node starts
  (:class:`~tunnelmesh.exit.service.ExitService`): who may use this exit, what it forwards, and
  the client's routes kept in step with the peer table.

See docs/exitnode.md.
"""
