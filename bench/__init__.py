"""Benchmarks of the fused ops, the training step and the data path; counters of FLOPs and
bytes; a roofline model of named GPUs; the static kernel report. Run ``python -m bench``
(``--quick`` for CI) or the pytest-benchmark suites with ``pytest bench/ --benchmark-only``.
"""
