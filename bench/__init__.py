"""`make bench`: side-by-side benchmarks of mlrollout against the systems users would pick instead.

Run with ``python -m bench --out docs``. Not part of ``make test``;
a smoke run (tiny durations) is, so the harness cannot silently rot.
"""
