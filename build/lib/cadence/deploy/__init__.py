"""Export, inference runtimes and the real-time control loop (issue 3)."""
