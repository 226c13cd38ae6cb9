"""The stream benchmark runs end to end on loopback and reports every row it promises (not a speed test)."""

from __future__ import annotations

import pytest

from benchmarks import bench_stream


@pytest.mark.slow  # starts a Python process of its own
def test_stream_benchmark_measures_all_four_transports(tmp_path):
    result = bench_stream.main(["--sizes-mib", "1", "--repeats", "1", "--results-dir", str(tmp_path)])
    (case,) = result["cases"]
    for key in ("grpc_tls_MBps", "tcp_MBps", "tls_socket_MBps", "raw_grpc_tls_MBps"):
        assert case[key] > 0, key
    assert case["ratio"] == case["grpc_tls_MBps"] / case["tcp_MBps"]
    assert (tmp_path / "stream_throughput.json").exists()
