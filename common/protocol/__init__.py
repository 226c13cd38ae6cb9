"""Protocol value types: what a message *means*, independent of how it is encoded or carried.

The bottom layer of the tree. The wire (protobuf and raw-byte encoding), the transport (gRPC streams),
the paradigm API and both daemons import from here, and this package imports none of them.
"""
