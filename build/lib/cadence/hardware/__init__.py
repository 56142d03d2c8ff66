"""Robot protocol, simulated and networked robots, safety (issue 3)."""
