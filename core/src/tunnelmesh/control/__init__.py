"""The peer side of the control plane.

* :mod:`~tunnelmesh.control.client`: :class:`ControlClient` (register, heartbeat, push channel)
  and :func:`fetch_ca` (first contact);
* :mod:`~tunnelmesh.control.peertable`: the sans-IO peer table and its change events, which the
  data plane consumes;
* :mod:`~tunnelmesh.control.contexts`: the contexts store (``~/.tunnelmesh/contexts.json``);
* :mod:`~tunnelmesh.control.messages`: the API's message types, shared with the coordinator;
* :mod:`~tunnelmesh.control.trust`: installing the mesh CA in the system trust store.

Import the submodules directly; this package imports nothing heavy itself.
"""
