"""The HTTP API: ``imagegen api`` serves /v1/jobs over the same database and broker."""
