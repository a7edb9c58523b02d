"""Benchmark harness for the chat relay (issue 5): `python -m bench`. See bench/README.md."""
