"""HTTP plumbing every feature shares: health and readiness, the metrics endpoint and
middleware, and the REST helpers (errors, bearer tokens, JSON bodies)."""
