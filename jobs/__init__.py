"""Batch and stream jobs: Spark feature engineering, vector generation, PyFlink real-time features."""
