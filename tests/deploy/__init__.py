"""Tests of the deployment files (deploy/) and the packaging."""
