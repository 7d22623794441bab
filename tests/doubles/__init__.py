"""Test doubles and helpers shared by tests and benchmarks (source checkout only, not installed)."""
