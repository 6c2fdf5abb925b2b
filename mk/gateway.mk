# Gateway targets (issue 3). See docs/gateway.md.
BENCH_GATEWAY_ARGS ?=

.PHONY: bench-gateway

bench-gateway: install redis ## gateway: exact/semantic hit latency + throughput (hot layer on/off, naive relay), miss overhead
	flock /tmp/reprise-bench.lock $(PY) -m bench.gateway.bench_gateway $(BENCH_GATEWAY_ARGS)

.PHONY: bench-routing
BENCH_ROUTING_ARGS ?=

bench-routing: install ## gateway: turn-5 TTFT over two inference replicas (one core each), prefix routing vs round-robin vs one replica (MODEL=tiny for the mechanics only)
	flock /tmp/reprise-bench.lock $(PY) -m bench.routing $(if $(MODEL),--model $(MODEL)) $(BENCH_ROUTING_ARGS)

.PHONY: bench-attacks

bench-attacks: install redis model-ready ## attack sweep of the whole stack (bad input, overload, tenancy, internal auth): one table row per attack, exit code = rows not ok (docs/deploy.md)
	flock /tmp/reprise-bench.lock $(PY) -m bench.attacks $(BENCH_ATTACKS_ARGS)

.PHONY: bench-overload
BENCH_OVERLOAD_ARGS ?=

bench-overload: install redis model-ready ## gateway: 50 semantic chats in flight (real model), lookup budget by miss cost vs fixed -> bench/results/overload-<cpu>.{json,md}
	flock /tmp/reprise-bench.lock $(PY) -m bench.gateway.overload $(BENCH_OVERLOAD_ARGS)
