"""The `hpcrag` admin CLI: thin click commands over the modules below it."""
