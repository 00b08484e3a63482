"""Item vectors -> a faiss index bundle: see `job.run_vectors`."""
