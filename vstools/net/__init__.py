"""Routed guest networking (DESIGN §6): ``plan`` computes a guest's attachment (pure),
``routed`` wires and unwires it through netlink under the host's network lock (the uplink, the
/32 routes, proxy ARP, the veth) and keeps the registry of who uses what, ``probe`` checks that
a new address is free on the host and its network (ARP)."""
