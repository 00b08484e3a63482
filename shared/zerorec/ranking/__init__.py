"""Ranking: DeepFM training (torch, `ranking.deepfm`) and ONNX serving (`ranking.onnx_scorer`).

This package's `__init__` imports neither torch nor onnxruntime, so the serving path stays torch-free:
import `zerorec.ranking.onnx_scorer` to serve and `zerorec.ranking.deepfm` only in training jobs.
"""
