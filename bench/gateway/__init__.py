"""Gateway benchmark (``make bench-gateway``): hit latency and throughput, miss overhead."""
