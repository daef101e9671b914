"""Tests of the PostgreSQL side: the SQL install and capture, its CLI, the sequencer role."""
