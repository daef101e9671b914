"""Tests of the demo: `relay demo` and its page, end to end."""
