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
houses = $(ISTAMPS)/wheelhouse $(if $(wildcard images/$(1)/apt.lock),$(ISTAMPS)/debhouse) \
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

# ---------------------------------------------------------------- platforms (linux/amd64, linux/arm64)
# PLATFORM: the Docker platform the images are built for and the conversions run on; default the
# host's (an Apple-silicon Mac: linux/arm64, built natively by Docker Desktop). The other one builds
# and runs under qemu-user-static emulation (scripts/binfmt.sh, installed by scripts/docker-engine.sh).
# Host-platform images keep the plain tags and stamps (modelport/<img>:$(VERSION), build/stamps/);
# the other platform's get a -<arch> suffix (modelport/<img>:$(VERSION)-arm64, modelport/base:
# bookworm-arm64) and stamps under build/stamps/<arch>/, so both sets live side by side on one engine.
# images/<img>/platforms (if present) lists the platforms an image is built for, with the reason.
HOST_ARCH := $(patsubst x86_64,amd64,$(patsubst aarch64,arm64,$(shell uname -m)))
PLATFORM ?= linux/$(HOST_ARCH)
ARCH := $(patsubst linux/%,%,$(PLATFORM))
ifeq ($(filter $(PLATFORM),linux/amd64 linux/arm64),)
  $(error PLATFORM=$(PLATFORM): the images are built for linux/amd64 and linux/arm64)
endif
ifeq ($(ARCH),$(HOST_ARCH))
  TAG_SUFFIX :=
  ISTAMPS := $(STAMPS)
  PLATFORM_ARG :=
else
  TAG_SUFFIX := -$(ARCH)
  ISTAMPS := $(STAMPS)/$(ARCH)
  PLATFORM_ARG := --platform $(PLATFORM)
endif
IMAGE_TAG := $(VERSION)$(TAG_SUFFIX)
# modelport's own base (make base) has one tag per platform; a registry base (python:3.11-slim-
# bookworm) is multi-platform already and is used as it is.
PBASE := $(if $(filter modelport/base:%,$(BASE)),$(BASE)$(TAG_SUFFIX),$(BASE))
platforms_of = $(or $(strip $(shell sed 's/\#.*//' images/$(1)/platforms 2>/dev/null)),linux/amd64 linux/arm64)
check_platform = $(if $(filter $(PLATFORM),$(call platforms_of,$(1))),:,echo "error: images/$(1)/platforms: \
  $(1) is built for $(call platforms_of,$(1)) only, not $(PLATFORM) (the reason is in that file)" >&2; exit 2)
# Named on the command line for a platform it is not built for: stop before fetching anything.
not_here := $(foreach i,$(IMAGES),$(if $(filter $(PLATFORM),$(call platforms_of,$(i))),,$(i)))
ifneq ($(filter $(not_here) $(addprefix image-,$(not_here)),$(MAKECMDGOALS)),)
  $(error $(firstword $(filter $(not_here),$(patsubst image-%,%,$(MAKECMDGOALS)))) is not built for $(PLATFORM): \
    see images/$(firstword $(filter $(not_here),$(patsubst image-%,%,$(MAKECMDGOALS))))/platforms)
endif

# ---------------------------------------------------------------- inputs of the image builds
.PHONY: base wheelhouse debhouse npmhouse lock lock-apt dist
base: ## build the air-gapped base image modelport/base:bookworm (debootstrap; PLATFORM=linux/arm64: -arm64)
	scripts/base-image.sh modelport/base:bookworm$(TAG_SUFFIX) $(ARCH)

lock: ## re-resolve images/*/requirements.in into hash-pinned requirements.lock (network)
	$(PYTHON) scripts/lock.py

wheelhouse: $(ISTAMPS)/wheelhouse ## download every locked wheel of PLATFORM into wheelhouse/ (hashes checked)
$(ISTAMPS)/wheelhouse: $(wildcard images/*/requirements.lock)
	PLATFORMS=$(PLATFORM) scripts/wheelhouse.sh
	@mkdir -p $(@D) && touch $@

lock-apt: ## re-resolve images/*/apt.in into sha256-pinned apt.lock (Docker + the Debian mirror)
	DOCKER=$(DOCKER) BASE=$(BASE) $(PYTHON) scripts/lock_apt.py

debhouse: $(ISTAMPS)/debhouse ## download every locked Debian package of PLATFORM into debhouse/ (hashes checked)
$(ISTAMPS)/debhouse: $(wildcard images/*/apt.lock)
	ARCHES=$(ARCH) $(PYTHON) scripts/debhouse.py
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
images: $(addprefix image-,$(filter-out $(not_here),$(IMAGES))) ## build every toolchain image + the validator (of PLATFORM)

# Each image: hermetic build (no network), then normalized so its ID depends only on content.
# The first prerequisite is the Dockerfile actually used (its own or the template), hence -f $<.
# For the other platform (PLATFORM=linux/arm64 here): `docker build --platform` (BuildKit runs each
# RUN under qemu), tag and stamp suffixed per the platforms block above; the normalized image keeps
# architecture arm64 in its config.
.SECONDEXPANSION:
$(ISTAMPS)/image-%: $$(call dockerfile,$$*) images/%/requirements.lock $$(wildcard images/$$*/apt.* images/$$*/platforms) \
    images/apt-install.sh $(WHEEL) $$(call houses,$$*)
	@$(call check_platform,$*)
	@mkdir -p $(@D)
	DOCKER_BUILDKIT=1 $(DOCKER) build $(PLATFORM_ARG) --network none $(SECRET_ARG) --build-arg BASE=$(PBASE) \
	  --build-arg SOURCE_DATE_EPOCH=$(SOURCE_DATE_EPOCH) --build-arg VERSION=$(VERSION) $(call toolchain_arg,$*) \
	  -f $< -t modelport/$*:build$(TAG_SUFFIX) .
	$(PYTHON) scripts/normalize_image.py --remove-source modelport/$*:build$(TAG_SUFFIX) modelport/$*:$(IMAGE_TAG) > $@.tmp
	$(if $(filter 1,$(PRUNE_BUILD_CACHE)),$(DOCKER) builder prune -af >/dev/null)
	mv $@.tmp $@

$(addprefix image-,$(IMAGES)): image-%: $(ISTAMPS)/image-%
image-digests: ## print the content-derived ID of every built image (of PLATFORM)
	@for i in $(IMAGES); do \
	  if [ -f $(ISTAMPS)/image-$$i ]; then printf '%-10s %s\n' $$i "$$(cut -d' ' -f1 $(ISTAMPS)/image-$$i)"; \
	  else printf '%-10s %s\n' $$i "(not built)"; fi; done

# ---------------------------------------------------------------- docker compose
# `make prepare` is the one preparation docker-compose.yml needs: it builds the images (the same
# hermetic, normalized builds as image-<name>) and writes .env, which compose reads by itself:
# pyproject's version, the invoking user's UID/GID (as MODELPORT_UID/_GID: bash's UID is read-only and
# never exported), BASE, SOURCE_DATE_EPOCH and every built image's normalized ID (recorded in the
# manifests, as the conversion targets below record it). SERVICES narrows the images built.
SERVICES ?= $(filter-out $(not_here),$(IMAGES))
COMPOSE ?= $(shell $(DOCKER) compose version >/dev/null 2>&1 && echo "$(DOCKER) compose" || echo docker-compose)
.PHONY: prepare
prepare: $(addprefix $(STAMPS)/image-,$(SERVICES)) ## build the images and write .env for `docker compose run` (SERVICES=...)
	@{ echo "# written by 'make prepare' for docker-compose.yml; rerun it after a version or image change"; \
	  echo "MODELPORT_VERSION=$(VERSION)"; \
	  echo "MODELPORT_UID=$$(id -u)"; echo "MODELPORT_GID=$$(id -g)"; \
	  echo "BASE=$(BASE)"; echo "SOURCE_DATE_EPOCH=$(SOURCE_DATE_EPOCH)"; \
	  for i in $(IMAGES); do f=$(STAMPS)/image-$$i; \
	    if [ -f $$f ]; then echo "MODELPORT_ID_$$(echo $$i | tr a-z A-Z)=$$(cut -d' ' -f1 $$f)"; fi; done; \
	} > .env.tmp && mv .env.tmp .env
	@echo "prepare: images $(SERVICES) built; .env written. Next: $(COMPOSE) run --rm onnx convert <model> --target onnx --out /artifacts/<model>/onnx"
ifneq ($(filter-out $(IMAGES),$(SERVICES)),)
  $(error SERVICES: unknown $(filter-out $(IMAGES),$(SERVICES)); the services are: $(IMAGES))
endif
# Compose runs the host platform's images (its tags carry no -<arch> suffix).
ifneq ($(filter prepare,$(MAKECMDGOALS)),)
  ifneq ($(ARCH),$(HOST_ARCH))
    $(error make prepare builds the images compose runs, the host platform's (linux/$(HOST_ARCH)); drop PLATFORM=$(PLATFORM))
  endif
endif

# ---------------------------------------------------------------- conversions
.PHONY: webgpu $(TOOLCHAINS) clients validate all
webgpu: onnx ## MODEL -> ONNX for transformers.js/WebGPU, validated in the validator image
# One conversion target per toolchain (`make help` lists them with describe.<t>).
$(TOOLCHAINS): %: $(ISTAMPS)/$(MODEL_NAME)-%.validated

# Convert in the toolchain image (no validation there), then validate in the validator image.
# The stamp is written only when validation passes, so a failed run is redone next time.
# The other platform (PLATFORM=linux/arm64 on amd64): its images, `docker run --platform`, and the
# artifact in artifacts/<model>/<target>-<arch> beside the host platform's.
$(ISTAMPS)/$(MODEL_NAME)-%.validated: $(ISTAMPS)/image-% $(ISTAMPS)/image-validator $(MODEL_DEPS)
	@mkdir -p $(@D) artifacts
	$(DOCKER) run $(PLATFORM_ARG) $(RUN_ARGS) -e MODELPORT_IMAGE="modelport/$*:$(IMAGE_TAG)@$$(cut -d' ' -f1 $(ISTAMPS)/image-$*)" \
	  modelport/$*:$(IMAGE_TAG) convert $(MODEL_ARG) --target $* $(VARIANTS_ARG) \
	  --out /artifacts/$(MODEL_NAME)/$*$(TAG_SUFFIX) --force --skip-validation
	$(DOCKER) run $(PLATFORM_ARG) $(RUN_ARGS) $(VALIDATOR_ARGS) -e MODELPORT_IMAGE="modelport/validator:$(IMAGE_TAG)@$$(cut -d' ' -f1 $(ISTAMPS)/image-validator)" \
	  modelport/validator:$(IMAGE_TAG) validate /artifacts/$(MODEL_NAME)/$*$(TAG_SUFFIX)
	@touch $@

# The real clients on MODEL's ONNX artifact (transformers.js in Node and headless Chromium), in the
# validator image; results go into the artifact's manifest and report.html. VARIANTS narrows it.
CLIENTS ?= node,chromium-wasm,chromium-webgpu
clients: ## run MODEL's ONNX artifact in transformers.js (Node, Chromium wasm/WebGPU) in the validator image
	@test -d $(ART)/onnx$(TAG_SUFFIX) || { echo "error: no ONNX artifact in $(ART)/onnx$(TAG_SUFFIX): run 'make webgpu MODEL=$(MODEL)' first" >&2; exit 2; }
	$(DOCKER) run $(PLATFORM_ARG) $(RUN_ARGS) $(VALIDATOR_ARGS) modelport/validator:$(IMAGE_TAG) clients /artifacts/$(MODEL_NAME)/onnx$(TAG_SUFFIX) \
	  --clients $(CLIENTS) $(VARIANTS_ARG)

validate: ## re-validate every artifact of MODEL in the validator image
	@test -d $(ART) || { echo "error: no artifacts for $(MODEL_NAME) in $(ART)" >&2; exit 2; }
	@for d in $(ART)/*/; do $(DOCKER) run $(PLATFORM_ARG) $(RUN_ARGS) $(VALIDATOR_ARGS) modelport/validator:$(IMAGE_TAG) validate /artifacts/$(MODEL_NAME)/$$(basename $$d) || exit 1; done

all: $(filter-out $(not_here),$(TOOLCHAINS)) ## every target for MODEL (those built for PLATFORM)

# ---------------------------------------------------------------- release (docs/release.md)
# `make release MODELS="m1 m2" TARGETS="onnx mlx"`: the images, then every (model, target) pair through
# the conversion targets above (one recursive `make <target> MODEL=<model>` each: `make -j2 release`
# runs two pairs at once, the same matrix .github/workflows/release.yml spreads over runners), then
# scripts/release.py writes release/$(VERSION)/ (artifacts, release.json, one CycloneDX SBOM per image
# and platform). The images are built first, by this make, so parallel pairs never build one image
# twice. RELEASE_ARCHS: other platforms whose images are built and listed too (e.g. arm64; conversions
# run in the host's images). FORCE=1 replaces an existing release of ours.
MODELS ?= $(MODEL)
TARGETS ?= $(TOOLCHAINS)
RELEASE_ARCHS ?=
FORCE ?=
DIR ?= release/$(VERSION)
release_images := $(sort $(TARGETS) validator)
# Another platform's images: those whose images/<img>/platforms lists it (coreml: amd64 only).
release_images_for = $(foreach i,$(release_images),$(if $(filter linux/$(1),$(call platforms_of,$(i))),$(i)))
# release-pair/<target>/<model> (a model may be a local directory, hence target first).
release_pairs := $(foreach m,$(MODELS),$(foreach t,$(TARGETS),release-pair/$(t)/$(m)))
pair_target = $(firstword $(subst /, ,$(1)))
pair_model = $(patsubst $(call pair_target,$(1))/%,%,$(1))
ifneq ($(filter release,$(MAKECMDGOALS)),)
  ifneq ($(PLATFORM),linux/$(HOST_ARCH))
    $(error make release converts on the host platform (linux/$(HOST_ARCH)); add the other one's images with RELEASE_ARCHS=$(ARCH), not PLATFORM=)
  endif
  ifneq ($(filter-out $(TOOLCHAINS),$(TARGETS)),)
    $(error TARGETS: unknown $(filter-out $(TOOLCHAINS),$(TARGETS)); the targets are: $(TOOLCHAINS))
  endif
  ifneq ($(filter-out $(call release_images_for,$(HOST_ARCH)),$(release_images)),)
    $(error TARGETS: $(filter-out $(call release_images_for,$(HOST_ARCH)),$(release_images)) not built for linux/$(HOST_ARCH), where make release converts (see images/<name>/platforms))
  endif
  release_model_check := $(shell $(PYTHON) scripts/release.py check-models $(MODELS) 2>&1)
  ifneq ($(release_model_check),)
    $(error $(release_model_check))
  endif
endif
.PHONY: release release-images verify-release $(release_pairs)
release-images: $(addprefix $(STAMPS)/image-,$(call release_images_for,$(HOST_ARCH)))
	$(foreach a,$(RELEASE_ARCHS),$(if $(call release_images_for,$(a)),$(MAKE) PLATFORM=linux/$(a) $(addprefix image-,$(call release_images_for,$(a))) &&)) true
$(release_pairs): release-pair/%: release-images
	$(MAKE) $(call pair_target,$*) MODEL=$(call pair_model,$*)
release: $(release_pairs) ## MODELS x TARGETS converted, validated, collected in release/VERSION with release.json + SBOMs (FORCE=1 replaces)
	$(PYTHON) scripts/release.py assemble --out release/$(VERSION) --version $(VERSION) --models "$(MODELS)" \
	  --targets "$(TARGETS)" --archs "$(RELEASE_ARCHS)" $(if $(filter 1,$(FORCE)),--force)

verify-release: ## rebuild DIR's release from a clean clone of its commit and compare digests (OK or the first difference)
	$(PYTHON) scripts/verify_release.py $(DIR) DOCKER=$(DOCKER) BASE=$(BASE) PYTHON=$(if $(findstring /,$(PYTHON)),$(abspath $(PYTHON)),$(PYTHON)) \
	  $(if $(PRUNE_BUILD_CACHE),PRUNE_BUILD_CACHE=$(PRUNE_BUILD_CACHE))

# ---------------------------------------------------------------- tests and housekeeping
.PHONY: setup test test-unit test-native test-docker test-slow test-slow-embed test-slow-arm64 clean clean-images
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

# The slow tier, not in CI (its two parts can run alone): ~35 + ~25 min on 2 cores, cold.
test-slow: test-slow-embed test-slow-arm64 ## slow tier, not in CI: full-shape embedders (test-slow-embed) + linux/arm64 images under qemu (test-slow-arm64)
test-slow-embed: setup ## full-shape Qwen3-Embedding-0.6B, EmbeddingGemma-300M and BGE-M3 to ONNX (validated) and MLX (conversion only: MLX's CPU BLAS would take hours to validate)
	scripts/tier.sh slow-embed sh -c '.venv/bin/python benchmarks/embed_scale.py --targets onnx && .venv/bin/python benchmarks/embed_scale.py --targets mlx --skip-validation'
# arm64 under emulation: the base (debootstrap), onnx + validator images (every RUN under qemu),
# tiny XLM-R converted and validated in them: ~23 min cold here (measured: docs/workbench.md), more
# than CI's Docker tier can carry, so it runs here; the Docker tier covers the same rules natively.
test-slow-arm64: setup ## linux/arm64 base + onnx + validator images built under qemu, tiny XLM-R converted and validated in them
	scripts/tier.sh slow-arm64 env MODELPORT_ARM64_TESTS=1 $(PYTEST) tests/docker/test_arm64.py

# Prerequisites run in this order (setup once), and make stops at the first tier that fails.
test: setup test-unit test-native test-docker ## setup, then the unit, native and Docker tiers (what CI runs)

clean: ## remove artifacts/, build/ and stamps (images stay; see clean-images)
	rm -rf artifacts build

clean-images: ## remove modelport images
	-$(DOCKER) rmi $(foreach i,$(IMAGES),modelport/$(i):$(VERSION)) 2>/dev/null
	rm -f $(STAMPS)/image-*
