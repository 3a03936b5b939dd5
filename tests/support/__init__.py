"""Helpers for p3scan's tests: real servers on loopback, network namespaces, p3scan runs."""
