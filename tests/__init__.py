"""Test suite of pgrelay: packages mirror relay's (core, pg, net, ops, demo), plus deploy, clients,
bench and chaos; shared helpers in tests/support, fixtures in tests/conftest.py."""
