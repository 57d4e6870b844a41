# The two commands a newcomer needs (see README.md), and the steps they are made of.
#   make demo        build, boot a Debian 12 box, install the packages, follow the journal
#   make test        every test: fmt, clippy, the alerting rules, unit and integration tests,
#                    the booted boxes, and 45 s of fuzzing a target beside them
#   make deb         target/debian/report-apis_*.deb and report-collector_*.deb
#   make experiment  measure the concurrency policies against an overloaded server
#   make bench       the benchmarks (they print figures)
#   make fuzz        every fuzz target for FUZZ_SECONDS each (300), crashes reported
#   make docker-demo the same demo in a Docker systemd box; make docker-down removes it
#   make long-run    the experiment in real time in a booted box; LONG_RUN=1 make test adds it
#   make fleet-soak  fault injection across hosts on the PostgreSQL lock for FLEET_SOAK_ROUNDS
#                    rounds (500, about 90 minutes); make test runs 50 beside the boxes
# demo, test, fuzz and deb install what they need first (scripts/install-deps.sh; run as root);
# deb installs only what building needs.

SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: demo test deb experiment bench fuzz deps deps-build deps-docker lint rules-test unit-test fuzz-test msrv-test box-test docker-test docker-demo docker-down long-run fleet-soak

deps:
	scripts/install-deps.sh

# Only what building the packages needs: a C linker, Rust, cargo-deb.
deps-build:
	scripts/install-deps.sh --build

# Also Debian's docker.io, without starting or enabling the host's Docker services.
deps-docker:
	scripts/install-deps.sh --docker

deb: deps-build
	cargo deb -p report-apis
	cargo deb -p report-collector

demo: deps
	scripts/demo.sh

lint:
	scripts/check-msrv.sh
	cargo fmt --all -- --check
	cd fuzz && cargo fmt -- --check
	cargo clippy --workspace --all-targets -- -D warnings

# The example alerting rules shipped in report-collector's package: valid, and doing what
# their unit tests say (promtool comes from Debian's prometheus package, see install-deps.sh).
RULES_DIR := packaging/debian/report-collector/examples
rules-test:
	promtool check rules $(RULES_DIR)/report-collector.rules.yml
	cd $(RULES_DIR) && promtool test rules report-collector.rules.test.yml

# Every test, those a plain `cargo test` leaves out (they need root, PostgreSQL 15, a mount
# namespace or the previous version's collector: `#[ignore = "why"]`) included; there a missing
# prerequisite fails the test. scripts/previous-collector.sh builds the previous version (after
# the tests' own build, whose dependencies it reuses).
unit-test:
	previous=$$(scripts/previous-collector.sh) && \
	REPORT_COLLECTOR_PREVIOUS=$$previous cargo test --workspace -- --include-ignored

# Hostile input against every parser (fuzz/README.md), bounded: each target FUZZ_TEST_SECONDS
# from its seeds, built unoptimised (an optimised cold build takes about twice as long). `make
# test` runs it beside the box tests, at the lowest priority (tests/beside.sh).
FUZZ_TEST_SECONDS ?= 45
fuzz-test:
	FUZZ_PROFILE=dev FUZZ_SECONDS=$(FUZZ_TEST_SECONDS) FUZZ_FRESH=1 fuzz/run.sh

# The build with the declared rust-version's toolchain (scripts/check-msrv.sh), in its own
# target directory; `make test` runs it beside the box tests after the fuzz step.
msrv-test:
	scripts/check-msrv.sh --build

fuzz: deps
	fuzz/run.sh

box-test:
	tests/run.sh

# On a Docker engine of its own, stopped at the end: the host's Docker is never used.
docker-test:
	tests/docker.sh

docker-demo: deps-docker
	scripts/docker-demo.sh

docker-down:
	scripts/docker-down.sh

long-run: deps
	scripts/long-run.sh

FLEET_SOAK_ROUNDS ?= 500
fleet-soak: deps
	tests/fleet.sh --rounds $(FLEET_SOAK_ROUNDS)

# The box tests run under tests/host-state.sh, which proves they left the host as it was.
test: deps-docker
	$(MAKE) lint
	$(MAKE) rules-test
	$(MAKE) unit-test
	tests/beside.sh tests/host-state.sh $(MAKE) box-test docker-test
	@if [[ -n "$${LONG_RUN:-}" ]]; then scripts/long-run.sh; fi

# Installs what it needs first: the build's packages and the PostgreSQL server its arms on the
# PostgreSQL lock start a throw-away cluster of (none left running).
experiment:
	scripts/install-deps.sh --experiment
	cargo run --release -p experiment

bench: deps
	bench/report-apis/run.sh
	bench/report-collector/run.sh
	bench/report-collector/lock.sh
