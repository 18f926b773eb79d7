"""Small helpers with no hpcrag dependencies."""
