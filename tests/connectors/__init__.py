"""Connector tests: shared HTTP client, rate limiting, pagination and the REST connector."""
