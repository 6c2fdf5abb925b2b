# Inference service: benchmark and the optional llama.cpp peer (issue 5).
#
# llama-cpp-python is a benchmark extra only (never a test dependency). It builds from source
# (~10-15 min on 2 cores), so the wheel is built once into .cache/wheels/ (git-ignored) and
# reinstalled from there. GGML_NATIVE=ON segfaults in the AMX path on some CPUs here, so the build
# is portable (NATIVE and AMX off) with each AVX-512 extension switched on only when this CPU has
# it: forcing AVX-512 on an AVX2-only CPU (AMD Zen 3) builds a library that dies of SIGILL.
LLAMACPP_VERSION ?= 0.3.36
LLAMACPP_WHEELS := .cache/wheels
CPU_FLAGS := $(shell grep -m1 '^flags' /proc/cpuinfo 2>/dev/null)
cpu_has = $(if $(filter $(1),$(CPU_FLAGS)),ON,OFF)
LLAMACPP_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX512=$(call cpu_has,avx512f) \
  -DGGML_AVX512_VBMI=$(call cpu_has,avx512vbmi) -DGGML_AVX512_VNNI=$(call cpu_has,avx512_vnni) \
  -DGGML_AVX512_BF16=$(call cpu_has,avx512_bf16) -DGGML_AVX_VNNI=$(call cpu_has,avx_vnni) \
  -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAVA_BUILD=OFF
BENCH_LOCK ?= /tmp/reprise-bench.lock
BENCH_INFERENCE_ARGS ?=

.PHONY: llamacpp llama-server bench-inference bench-sentiment bench-sched bench-chat

llamacpp: install ## build (once, ~15 min) and install llama-cpp-python, the benchmark peer
	@if $(PY) -c 'import llama_cpp' 2>/dev/null; then echo "llama-cpp-python already installed"; \
	else \
	  mkdir -p $(LLAMACPP_WHEELS); \
	  ls $(LLAMACPP_WHEELS)/llama_cpp_python-$(LLAMACPP_VERSION)-*.whl >/dev/null 2>&1 || \
	    CMAKE_ARGS="$(LLAMACPP_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
	    flock $(BENCH_LOCK) $(PY) -m pip wheel --no-deps -w $(LLAMACPP_WHEELS) llama-cpp-python==$(LLAMACPP_VERSION); \
	  $(PY) -m pip install -q --no-deps $(LLAMACPP_WHEELS)/llama_cpp_python-$(LLAMACPP_VERSION)-*.whl; \
	  $(PY) -m pip install -q 'diskcache>=5.6.1' 'jinja2>=2.11.3' 'typing-extensions>=4.5.0'; \
	fi

# llama.cpp's own server (the continuous-batching peer of `make bench-peer`), built from the llama.cpp source
# that the llama-cpp-python sdist vendors (same version, same portable flags as above) into
# .cache/llama-server/bin/llama-server, where bench/inference/peer_server.py looks first. ~10 min on 2 cores.
LLAMA_SERVER_BUILD := .cache/llama-server
llama-server: install ## build llama.cpp's server (llama-server, --parallel N continuous batching), the peer under concurrency
	@if [ -x $(LLAMA_SERVER_BUILD)/bin/llama-server ]; then echo "llama-server already built"; else \
	  set -e; mkdir -p $(LLAMA_SERVER_BUILD)/src; \
	  $(PY) -m pip download -q --no-deps --no-binary :all: -d $(LLAMA_SERVER_BUILD)/src llama-cpp-python==$(LLAMACPP_VERSION); \
	  tar xzf $(LLAMA_SERVER_BUILD)/src/llama_cpp_python-$(LLAMACPP_VERSION).tar.gz -C $(LLAMA_SERVER_BUILD)/src; \
	  cmake -S $(LLAMA_SERVER_BUILD)/src/llama_cpp_python-$(LLAMACPP_VERSION)/vendor/llama.cpp -B $(LLAMA_SERVER_BUILD) \
	    -DCMAKE_BUILD_TYPE=Release $(LLAMACPP_CMAKE_ARGS) -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON \
	    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_OPENSSL=OFF -DBUILD_SHARED_LIBS=OFF; \
	  CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) flock $(BENCH_LOCK) cmake --build $(LLAMA_SERVER_BUILD) --target llama-server; \
	  rm -rf $(LLAMA_SERVER_BUILD)/src; \
	fi

# The benchmark needs the model; llama.cpp is used when installed (`make llamacpp`), else skipped
# and said so in the summary. Every timing runs under the shared bench lock.
bench-inference: install model ## inference benchmark -> bench/results/inference-<cpu>.{json,md} + a HISTORY.md row
	flock $(BENCH_LOCK) $(PY) -m bench.inference $(BENCH_INFERENCE_ARGS)

bench-sentiment: install model ## sentiment on clean texts and hard cases (negations, contrast, slang, sarcasm), en + zh, dev and test
	flock $(BENCH_LOCK) $(PY) -m bench.inference.sentiment_hard

# Scheduling under load (issue 25): a short Classify while four long ones run, and 50 Chats with
# 20 s deadlines, against a service process the bench starts.
BENCH_SCHED_ARGS ?=
bench-sched: install model ## inference scheduling: short-behind-long latency, 50 chats with deadlines -> bench/results/sched.{json,md}
	flock $(BENCH_LOCK) $(PY) -m bench.load_sched $(BENCH_SCHED_ARGS)

# Chat quality (issue 23): 40 zh + en messages through the default model, before and after, scored by rubric;
# then the 24 held-out messages no prompt was chosen on.
BENCH_CHAT_ARGS ?=
bench-chat: install model ## chat replies of the default model scored (loops, length, refusals, echo, language) -> bench/results/chat-quality{,-heldout}-<cpu>.{json,md}
	flock $(BENCH_LOCK) $(PY) -m bench.inference.chat_quality $(BENCH_CHAT_ARGS)
	flock $(BENCH_LOCK) $(PY) -m bench.inference.chat_quality --set heldout $(BENCH_CHAT_ARGS)

# The llama.cpp peer under concurrency (1/4/8/16 sequences in one batch per step) and the memory-bandwidth
# probe (issue 25). llama.cpp is measured when `make llamacpp` installed it, its server when a llama-server
# binary is found (bench/inference/peer_server.py says how to build one); the probe needs only cc.
BENCH_PEER_ARGS ?=
.PHONY: bench-peer
bench-peer: install model ## llama.cpp aggregate decode at 1/4/8/16 parallel sequences + memory-bandwidth probe -> bench/results/peer-<cpu>.{json,md}
	flock $(BENCH_LOCK) $(PY) -m bench.inference.peer_bench $(BENCH_PEER_ARGS)
