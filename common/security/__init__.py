"""Who is on the other end of a connection, and the files that prove it: what both daemons and the operator
tools need at run time.

``ids`` (client- and run-id syntax), ``errors`` (``TLSConfigError``), ``layout`` (where each file of a
certificates folder lives and how to re-create it), ``pem`` (reading certificates and keys with one-line
errors), ``identity`` (a peer's identity from its verified certificate, and the revocation list the server
reads), ``credentials`` (gRPC credentials from those files, and the one resolver of ``--certs/--ca/--cert/--key``).

Issuing certificates and writing the revocation list are operator tooling (``slperf.pki``), not run time.
"""
