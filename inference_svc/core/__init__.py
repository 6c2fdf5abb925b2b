"""Inference service core: prompts, decoding, the engine, scheduling and the model worker. Never imports grpc.

The model itself (loading, weights, forward pass, kernels) is :mod:`inference_svc.runtime`.
"""
