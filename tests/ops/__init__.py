"""Tests of operations: settings and start-up checks, metrics and health, logs."""
