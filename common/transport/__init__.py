"""The transport layer: gRPC channels and servers, and the session endpoint both daemons speak through.

Above the wire (which turns messages into envelopes and back) and below the paradigms (which never see
gRPC): this is the only place in ``slperf.common`` that knows the session is a gRPC bidirectional stream.
"""
