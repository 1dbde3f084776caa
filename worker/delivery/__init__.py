"""Push delivery of job results: outbox rows sent to the requester (signed webhooks, ...)."""
