"""SLPerf's benchmarks: the research suites (``suites/*.yaml``, run with ``slperf bench --suite NAME``) and the
performance benchmarks (``python -m benchmarks.run_all``; each script prints its figures and writes
``benchmarks/results/<name>.json``). None of them is a pass/fail test."""
