"""The data plane of a node: the routing table and the forwarding loop.

* :mod:`tunnelmesh.mesh.routing` -- mesh IP to peer, O(1), with the update API the control
  plane calls (``set_peer`` / ``remove_peer`` / ``set_link``);
* :mod:`tunnelmesh.mesh.forwarder` -- TUN to links and back, in batches, no hook per packet.
"""
