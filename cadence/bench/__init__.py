"""The `cadence bench <name>` commands: each measures a technique side by side with its baseline,
prints a table and writes results.json (``pair.py``: what they share; ``config.py``: their schemas)."""
