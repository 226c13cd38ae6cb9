"""SLPerf: split-learning benchmark and federation."""

__version__ = "0.1.0"
