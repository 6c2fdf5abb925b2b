"""Cache service core: normalization, keys, tiers, Redis store. Never imports grpc."""
