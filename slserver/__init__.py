"""The SLPerf server daemon."""
