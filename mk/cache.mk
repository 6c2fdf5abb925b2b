# Cache service targets (issue 6).
.PHONY: bench-cache

bench-cache: install redis ## cache: hit quality on the labelled pairs + lookup latency at 10k/100k/1M entries
	flock /tmp/reprise-bench.lock $(PY) -m bench.cache.bench_cache $(BENCH_CACHE_ARGS)
