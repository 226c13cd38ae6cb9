"""The SLPerf client daemon."""
