# Pollen's entry points. The README names two of them: `make demo` and `make test`.
# Everything runs from a fresh clone: `make test` installs what the tests need first (as root).

CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: demo test deps lint crds drift ci fuzz fuzz-check fuzz-seeds fuzz-smoke

## Install the outside tools the tests use (Debian packages, cosign, oras, helm, the API server).
deps:
	bash e2e/tools/install-deps.sh
	bash e2e/tools/build-apiserver.sh

## Run the whole test suite: unit tests, real-registry interop, real QUIC swarms, the fleet lab,
## and the operator against a real API server. Needs root for the network-namespace lab. The pollen-e2e
## tests include the fuzz regression check (`make fuzz-check`): every committed fuzz corpus input replayed
## through its parser on stable, so a parser that panics again on an input once found fails here.
test: deps
	$(CARGO) test --workspace --locked --exclude pollen-e2e
	$(CARGO) test --locked -p pollen-e2e -- --test-threads=2

## The fuzz campaign over every parser of user or peer input (fuzz/README.md): each target in turn, ten
## million executions (RUNS=N to change), then its corpus minimised. Needs nightly and cargo-fuzz.
## FUZZ_TARGETS="wire index" for some targets only. `make test` replays the committed corpora on stable
## (e2e/tests/fuzz_corpus.rs), so it needs neither.
fuzz:
	bash fuzz/campaign.sh $(FUZZ_TARGETS)

## A short libFuzzer run of each target (its corpus, then 5 s of mutation). Not part of `make test`:
## it needs nightly, and a cold start (cargo-fuzz, the fuzz build) takes about 11 min on two cores.
## New inputs go to a scratch folder, so the committed corpora stay as they are.
fuzz-smoke:
	scratch=$$(mktemp -d) && cd fuzz && for t in $$(cargo +nightly fuzz list); do \
	  mkdir -p $$scratch/$$t && cargo +nightly fuzz run -s none $$t $$scratch/$$t corpus/$$t -- \
	    -max_total_time=5 -rss_limit_mb=2048 || exit 1; done; rm -rf $$scratch

## The fuzz regression check alone: every committed corpus input through its target's body, on stable
## (`make test` runs it with the other pollen-e2e tests).
fuzz-check:
	$(CARGO) test --locked -p pollen-e2e --test fuzz_corpus

## Rewrite the fuzz seed inputs and the throwaway keys the crl and grant seeds are signed with.
fuzz-seeds:
	$(CARGO) test --locked -p pollen-e2e --test fuzz_corpus -- --ignored make_fuzz_seeds

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
