"""Tests of the pure core: events, filters, the router, the outbound queue, the session, admission, auth, backoff."""
