"""Inference service core: model loading, prompts, the model worker. Never imports grpc."""
