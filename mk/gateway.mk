# Gateway targets (issue 3). See docs/gateway.md.
BENCH_GATEWAY_ARGS ?=

.PHONY: bench-gateway

bench-gateway: install redis ## gateway: exact/semantic hit latency + throughput (hot layer on/off, naive relay), miss overhead
	flock /tmp/reprise-bench.lock $(PY) -m bench.gateway.bench_gateway $(BENCH_GATEWAY_ARGS)
