# Deploy and load (issue 4): ghz-style load mixes, cache on/off benchmark, fault drills,
# Kubernetes manifests and container images. See docs/deploy.md.
BENCH_LOCK ?= /tmp/reprise-bench.lock
BENCH_ARGS ?=
MIX ?= classify
LOAD_ARGS ?=
K8S_OVERLAY ?= production
IMAGE_TAG ?= 0.1.0
IMAGE_PREFIX ?= reprise-

.PHONY: bench test-faults test-deploy ghz-configs load kube-certs kube-render kube-validate images

bench: install redis model ## load mixes vs the full local stack, cache off and on -> bench/results/load-*
	flock $(BENCH_LOCK) $(PY) -m bench.stack_bench $(BENCH_ARGS)

test-faults: install redis ## fault drills: cache killed, Redis restarted, SIGTERM inference, 2x overload
	$(PY) -m pytest -q -m faults tests/faults $(PYTEST_ARGS)

test-deploy: install ## pinning scripts, manifests (kubernetes-validate --strict), Dockerfiles, load generator
	$(PY) -m pytest -q tests/deploy $(PYTEST_ARGS)

ghz-configs: install ## regenerate deploy/ghz/*.json from bench/loadgen/mix.py
	$(PY) -m bench.loadgen.mix

load: install ## one ghz mix against a running gateway (make up): make load MIX=chat TOKEN=... LOAD_ARGS='-c 8'
	$(PY) -m bench.load --config deploy/ghz/$(MIX).json $(if $(TOKEN),--token '$(TOKEN)') $(LOAD_ARGS)

kube-certs: install ## the internal CA and mTLS certificates the manifests mount (once; rotation: docs/deploy.md)
	@test -f deploy/k8s/base/tls/ca.crt || $(PY) -m devtools.devcerts deploy/k8s/base/tls

kube-render: install kube-certs ## print a rendered overlay (K8S_OVERLAY=production|dev; production needs its redis.env)
	$(VENV)/bin/kubectl kustomize deploy/k8s/overlays/$(K8S_OVERLAY)

kube-validate: install kube-certs ## render an overlay and check every resource with kubernetes-validate --strict
	@mkdir -p .run
	$(VENV)/bin/kubectl kustomize deploy/k8s/overlays/$(K8S_OVERLAY) > .run/k8s-$(K8S_OVERLAY).yaml
	$(VENV)/bin/kubernetes-validate --strict --quiet .run/k8s-$(K8S_OVERLAY).yaml

images: ## build the three images (needs a Docker engine with BuildKit)
	for svc in inference cache gateway; do \
	  DOCKER_BUILDKIT=1 docker build -f deploy/docker/$$svc.Dockerfile -t $(IMAGE_PREFIX)$$svc:$(IMAGE_TAG) . || exit 1; \
	done
