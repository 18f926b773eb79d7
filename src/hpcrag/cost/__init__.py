"""Cost accounting: every request's tokens and dollars, every serving job's GPU-hours, and the report."""
