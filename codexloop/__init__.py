"""codexloop: a failing test in, working code out."""
