"""Prometheus metrics that hpcrag's services export."""
