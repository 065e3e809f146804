# Pollen's entry points. The README names two of them: `make demo` and `make test`.
# Everything runs from a fresh clone: `make test` installs what the tests need first (as root).

CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: demo test deps lint crds drift ci

## Install the outside tools the tests use (Debian packages, cosign, oras, helm, the API server).
deps:
	bash e2e/tools/install-deps.sh
	bash e2e/tools/build-apiserver.sh

## Run the whole test suite: unit tests, real-registry interop, real QUIC swarms, the fleet lab,
## and the operator against a real API server. Needs root for the network-namespace lab.
test: deps
	$(CARGO) test --workspace --locked --exclude pollen-e2e
	$(CARGO) test --locked -p pollen-e2e -- --test-threads=2

## Bring up a local fleet and roll out a signed update (see README).
demo: deps
	bash e2e/tools/demo.sh $(DEMO_ARGS)

## Regenerate the CRD YAML from the Rust types.
crds:
	$(CARGO) run -q --locked -p pollen-crds --bin crdgen

## Fail when the checked-in CRD YAML differs from what the types generate.
drift: crds
	git diff --exit-code -- crds/pollen.dev.yaml charts/pollen/crds/

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	sh images/lint.sh
	sh e2e/tools/lint-text.sh

## What CI runs (.ci/run): lint (rustfmt, clippy, hadolint, damaged text files), drift, then the README's test command.
ci: lint drift test
