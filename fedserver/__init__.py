"""The fed server: SplitFed's separate aggregator of the clients' bottoms (``slperf fedserver``)."""
