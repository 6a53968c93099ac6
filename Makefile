# modelport workbench: images, conversions in containers, validation, reproducibility checks.
# `make help` lists the targets. Conversions run with --network none as the invoking user.
SHELL := /bin/bash
.DEFAULT_GOAL := help

DOCKER ?= docker
# Any Debian-based Python 3.11 image. On machines without a registry: `make base` and
# BASE=modelport/base:bookworm.
BASE ?= python:3.11-slim-bookworm
MODEL ?= all-minilm-l6-v2
VARIANTS ?=
# Optional extra CA bundle for build steps that reach a registry (passed as a BuildKit secret,
# never copied into a layer). The hermetic images (wheelhouse) need none.
CACERT ?=
PYTHON ?= python3
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 1700000000)
# docker-compose.yml names its images modelport/<service>:${MODELPORT_VERSION}: compose run from a
# recipe gets pyproject's version (by hand: MODELPORT_VERSION=$(make -s version) docker compose ...).
MODELPORT_VERSION := $(VERSION)
export SOURCE_DATE_EPOCH DOCKER MODELPORT_VERSION

# The toolchains: each one is an image modelport/<t>:$(VERSION), an image-<t> target and a conversion
# target `make <t>` (convert MODEL with --target <t>, validate in the validator image). Adding one is
# one word here plus images/<t>/requirements.{in,lock}: it is built from images/toolchain/Dockerfile
# (TOOLCHAIN=<t>) unless it has its own images/<t>/Dockerfile (mlc: Debian packages too).
TOOLCHAINS := onnx coreml mlx mlc
IMAGES := $(TOOLCHAINS) validator
# `make help` line of each conversion target (optional).
describe.onnx := same as webgpu (the onnx toolchain image)
describe.coreml := MODEL -> Core ML .mlpackage, validated
describe.mlx := MODEL -> MLX safetensors, validated
describe.mlc := MODEL -> MLC/WebLLM package (WebGPU + wasm32), validated in Node and Chromium
describe = $(or $(describe.$(1)),MODEL -> $(1) in the $(1) toolchain image, validated)
# The Dockerfile an image is built from: its own, else the template (given TOOLCHAIN=<name>).
dockerfile = $(or $(wildcard images/$(1)/Dockerfile),images/toolchain/Dockerfile)
toolchain_arg = $(if $(wildcard images/$(1)/Dockerfile),,--build-arg TOOLCHAIN=$(1))
# The downloaded inputs an image's build mounts: wheels always, Debian packages where it has an
# apt.lock, npm tarballs for the validator (Node + the harnesses).
houses = $(STAMPS)/wheelhouse $(if $(wildcard images/$(1)/apt.lock),$(STAMPS)/debhouse) \
  $(if $(filter validator,$(1)),$(STAMPS)/npmhouse)
STAMPS := build/stamps
WHEEL := build/dist/modelport-$(VERSION)-py3-none-any.whl
NPM_LOCKS := src/modelport/clients/js/package-lock.json src/modelport/targets/mlc/js/package-lock.json images/node/package-lock.json
SRC := $(shell find src -name '*.py' -o -name '*.md' 2>/dev/null) pyproject.toml README.md
UID_GID := $(shell id -u):$(shell id -g)

# MODEL is a known model name (see `modelport recipes`) or a local Hugging Face model directory,
# mounted read-only at /models/<name>.
ifneq ($(wildcard $(MODEL)/config.json),)
  MODEL_NAME := $(notdir $(abspath $(MODEL)))
  MODEL_ARG := /models/$(MODEL_NAME)
  MODEL_MOUNT := -v $(abspath $(MODEL)):/models/$(MODEL_NAME):ro
  MODEL_DEPS := $(shell find $(MODEL) -type f)
else
  MODEL_NAME := $(MODEL)
  MODEL_ARG := $(MODEL)
  MODEL_MOUNT :=
  MODEL_DEPS :=
endif
ART := artifacts/$(MODEL_NAME)
# MLC_RUNTIME_CACHE: a host folder for TVM's web runtime objects (keyed by content hash, so a
# native build and the mlc image share them); default: the modelport-cache volume.
MLC_RUNTIME_CACHE ?=
RUN_ARGS = --rm --network none --user $(UID_GID) $(MODEL_MOUNT) \
  -v $(CURDIR)/artifacts:/artifacts -v modelport-cache:/cache \
  $(if $(MLC_RUNTIME_CACHE),-v $(abspath $(MLC_RUNTIME_CACHE)):/cache/modelport/mlc-runtime)
# Chromium (validator) needs more shared memory than Docker's 64 MB default.
VALIDATOR_ARGS = --shm-size 1g
comma := ,
# PRUNE_BUILD_CACHE=1 drops BuildKit's cache after each image is normalized: the cache holds a second
# copy of every raw layer, which a one-shot build (CI, a release) never reuses. Keep it (default) on a
# machine that rebuilds often.
PRUNE_BUILD_CACHE ?=
SECRET_ARG := $(if $(CACERT),--secret id=cacert$(comma)src=$(CACERT),)
VARIANTS_ARG := $(if $(VARIANTS),--variants $(VARIANTS),)

.PHONY: help
help: ## list targets
	@echo "modelport $(VERSION) — make targets (MODEL=$(MODEL), BASE=$(BASE))"
	@{ grep -hE '^[a-z][a-zA-Z0-9_-]*:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'; \
	   $(foreach t,$(TOOLCHAINS),printf '  %-16s %s\n' '$(t)' '$(call describe,$(t))';) } | sort

.PHONY: version
version: ## print modelport's version (pyproject.toml), which tags the images
	@echo $(VERSION)

# ---------------------------------------------------------------- inputs of the image builds
.PHONY: base wheelhouse debhouse npmhouse lock lock-apt dist
base: ## build the air-gapped base image modelport/base:bookworm (debootstrap)
	scripts/base-image.sh modelport/base:bookworm

lock: ## re-resolve images/*/requirements.in into hash-pinned requirements.lock (network)
	$(PYTHON) scripts/lock.py

wheelhouse: $(STAMPS)/wheelhouse ## download every locked wheel into wheelhouse/ (hashes checked)
$(STAMPS)/wheelhouse: $(wildcard images/*/requirements.lock)
	scripts/wheelhouse.sh
	@mkdir -p $(@D) && touch $@

lock-apt: ## re-resolve images/*/apt.in into sha256-pinned apt.lock (Docker + the Debian mirror)
	DOCKER=$(DOCKER) BASE=$(BASE) $(PYTHON) scripts/lock_apt.py

debhouse: $(STAMPS)/debhouse ## download every locked Debian package into debhouse/ (hashes checked)
$(STAMPS)/debhouse: $(wildcard images/*/apt.lock)
	$(PYTHON) scripts/debhouse.py
	@mkdir -p $(@D) && touch $@

npmhouse: $(STAMPS)/npmhouse ## download every locked npm tarball into npmhouse/ (integrity checked)
$(STAMPS)/npmhouse: $(NPM_LOCKS)
	$(PYTHON) scripts/npmhouse.py
	@mkdir -p $(@D) && touch $@

dist: $(WHEEL) ## build the modelport wheel the images install
$(WHEEL): $(SRC)
	@rm -rf build/dist && mkdir -p build/dist
	$(PYTHON) -m pip wheel -q --no-deps -w build/dist .
	@rm -rf build/lib build/bdist* src/*.egg-info

# ---------------------------------------------------------------- images
.PHONY: images $(addprefix image-,$(IMAGES)) image-digests
images: $(addprefix image-,$(IMAGES)) ## build every toolchain image + the validator

# Each image: hermetic build (no network), then normalized so its ID depends only on content.
# The first prerequisite is the Dockerfile actually used (its own or the template), hence -f $<.
.SECONDEXPANSION:
$(STAMPS)/image-%: $$(call dockerfile,$$*) images/%/requirements.lock $$(wildcard images/$$*/apt.*) images/apt-install.sh \
    $(WHEEL) $$(call houses,$$*)
	@mkdir -p $(@D)
	DOCKER_BUILDKIT=1 $(DOCKER) build --network none $(SECRET_ARG) --build-arg BASE=$(BASE) \
	  --build-arg SOURCE_DATE_EPOCH=$(SOURCE_DATE_EPOCH) --build-arg VERSION=$(VERSION) $(call toolchain_arg,$*) \
	  -f $< -t modelport/$*:build .
	$(PYTHON) scripts/normalize_image.py --remove-source modelport/$*:build modelport/$*:$(VERSION) > $@.tmp
	$(if $(filter 1,$(PRUNE_BUILD_CACHE)),$(DOCKER) builder prune -af >/dev/null)
	mv $@.tmp $@

$(addprefix image-,$(IMAGES)): image-%: $(STAMPS)/image-%
image-digests: ## print the content-derived ID of every built image
	@for i in $(IMAGES); do \
	  if [ -f $(STAMPS)/image-$$i ]; then printf '%-10s %s\n' $$i "$$(cut -d' ' -f1 $(STAMPS)/image-$$i)"; \
	  else printf '%-10s %s\n' $$i "(not built)"; fi; done

# ---------------------------------------------------------------- conversions
.PHONY: webgpu $(TOOLCHAINS) clients validate all
webgpu: onnx ## MODEL -> ONNX for transformers.js/WebGPU, validated in the validator image
# One conversion target per toolchain (`make help` lists them with describe.<t>).
$(TOOLCHAINS): %: $(STAMPS)/$(MODEL_NAME)-%.validated

# Convert in the toolchain image (no validation there), then validate in the validator image.
# The stamp is written only when validation passes, so a failed run is redone next time.
$(STAMPS)/$(MODEL_NAME)-%.validated: $(STAMPS)/image-% $(STAMPS)/image-validator $(MODEL_DEPS)
	@mkdir -p $(@D) artifacts
	$(DOCKER) run $(RUN_ARGS) -e MODELPORT_IMAGE="modelport/$*:$(VERSION)@$$(cut -d' ' -f1 $(STAMPS)/image-$*)" \
	  modelport/$*:$(VERSION) convert $(MODEL_ARG) --target $* $(VARIANTS_ARG) \
	  --out /artifacts/$(MODEL_NAME)/$* --force --skip-validation
	$(DOCKER) run $(RUN_ARGS) $(VALIDATOR_ARGS) -e MODELPORT_IMAGE="modelport/validator:$(VERSION)@$$(cut -d' ' -f1 $(STAMPS)/image-validator)" \
	  modelport/validator:$(VERSION) validate /artifacts/$(MODEL_NAME)/$*
	@touch $@

# The real clients on MODEL's ONNX artifact (transformers.js in Node and headless Chromium), in the
# validator image; results go into the artifact's manifest and report.html. VARIANTS narrows it.
CLIENTS ?= node,chromium-wasm,chromium-webgpu
clients: ## run MODEL's ONNX artifact in transformers.js (Node, Chromium wasm/WebGPU) in the validator image
	@test -d $(ART)/onnx || { echo "error: no ONNX artifact in $(ART)/onnx: run 'make webgpu MODEL=$(MODEL)' first" >&2; exit 2; }
	$(DOCKER) run $(RUN_ARGS) $(VALIDATOR_ARGS) modelport/validator:$(VERSION) clients /artifacts/$(MODEL_NAME)/onnx \
	  --clients $(CLIENTS) $(VARIANTS_ARG)

validate: ## re-validate every artifact of MODEL in the validator image
	@test -d $(ART) || { echo "error: no artifacts for $(MODEL_NAME) in $(ART)" >&2; exit 2; }
	@for d in $(ART)/*/; do $(DOCKER) run $(RUN_ARGS) $(VALIDATOR_ARGS) modelport/validator:$(VERSION) validate /artifacts/$(MODEL_NAME)/$$(basename $$d) || exit 1; done

all: $(TOOLCHAINS) ## every target for MODEL

# ---------------------------------------------------------------- tests and housekeeping
.PHONY: setup test test-unit test-native test-docker test-slow clean clean-images
setup: ## create .venv with the native toolchains (torch CPU, ONNX, Core ML, MLX, TVM) + browser clients
	./scripts/setup-native.sh
	./scripts/setup-clients.sh
	./scripts/setup-mlc.sh

# Three tiers; scripts/tier.sh prints each one's wall time and rc ("tier unit: 84 s (rc 0)").
PYTEST := .venv/bin/python -m pytest -q
test-unit: ## unit tier: tests/unit, no conversions beyond tiny models (needs .venv, not a full setup)
	@test -x .venv/bin/python || { echo "error: no .venv/bin/python: run 'make setup' first" >&2; exit 2; }
	scripts/tier.sh unit $(PYTEST) tests/unit

test-native: setup ## integration tier: real conversions, runtimes and clients, no Docker
	scripts/tier.sh native $(PYTEST) tests --ignore=tests/unit --ignore=tests/docker

test-docker: setup ## Docker tier: engine, base, images, `make webgpu` end to end, reproducibility
	scripts/tier.sh docker env MODELPORT_DOCKER_TESTS=1 $(PYTEST) tests/docker

test-slow: setup ## slow tier, not in CI (~35 min on 2 cores): full-shape Qwen3-Embedding-0.6B, EmbeddingGemma-300M and BGE-M3 to ONNX (validated) and MLX (conversion only: MLX's CPU BLAS would take hours to validate)
	scripts/tier.sh slow sh -c '.venv/bin/python benchmarks/embed_scale.py --targets onnx && .venv/bin/python benchmarks/embed_scale.py --targets mlx --skip-validation'

# Prerequisites run in this order (setup once), and make stops at the first tier that fails.
test: setup test-unit test-native test-docker ## setup, then the unit, native and Docker tiers (what CI runs)

clean: ## remove artifacts/, build/ and stamps (images stay; see clean-images)
	rm -rf artifacts build

clean-images: ## remove modelport images
	-$(DOCKER) rmi $(foreach i,$(IMAGES),modelport/$(i):$(VERSION)) 2>/dev/null
	rm -f $(STAMPS)/image-*
