"""Gateway core: the cache-first flow. Never imports grpc."""
