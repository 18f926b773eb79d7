"""Small helpers that depend on nothing of hpcrag's but its error type."""
