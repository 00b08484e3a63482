"""Offline features with PySpark: see `job.run_features`."""
