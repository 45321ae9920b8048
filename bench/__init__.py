"""Benchmark harness for mcp-shared-memory (issue 5): ``python -m bench --quick`` / ``--full``.

Every figure is a p50/p99 over many calls, printed beside its ratio to a floor measured in the same run
(the SDK's trivial-tool round trip, a raw INSERT, a raw Redis pipeline, one embedding...).
"""
