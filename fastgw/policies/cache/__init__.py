"""The response cache's package: [cache.NAME], a route's `cache` key, RFC 9111 shared-cache semantics,
the per-worker store, single-flight, stale answers, purge and the cache's metrics."""
