"""Real-time features with PyFlink: see `job` (runs in its own interpreter, see `requirements.txt`)."""
