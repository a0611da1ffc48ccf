"""Speed benchmarks: ratios of runs in one process, never asserted by the tests."""
