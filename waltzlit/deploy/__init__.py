"""Deployment of the two agents together: the shared pipeline, a terminal chat and an HTTP server."""
