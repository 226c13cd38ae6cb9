"""Shaped links on one host: client daemons in network namespaces of their own, each behind a rate-limited link
(``tc tbf`` on both ends of its veth) and a userspace delay relay (this kernel has no netem), so a benchmark
measures a paradigm over a LAN, a WAN or a constrained link instead of loopback.

- ``namespaces``: creating, entering and sweeping network namespaces (every name carries a prefix and its owner's
  pid, so leftovers of a killed run are found and removed); refuses clearly when not root or unavailable.
- ``shaping``: the ``tc tbf`` command for a rate on a device.
- ``topology``: a star of namespaces around a bridge (hosts, addresses, processes inside them, cables).
- ``relay``: the TCP relay that adds one-way delay (and, for fault tests, resets, cuts and a rate).
- ``measure``: a bulk transfer and a ping-pong over a shaped link, so a report shows the shaping is real.
- ``clients``: the placement the launcher uses: one namespace per client daemon, shaped as ``network:`` says.

Linux and root only; nothing is ever added to the root namespace.
"""
