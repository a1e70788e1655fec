# modcam — build, test, benchmark, fuzz. See README.md.
#
#   make test    set up (Debian packages, .venv, native build) and run every test
#   make bench   the benchmarks in bench/ (BENCH_ARGS=--quick for a short run)
#   make fuzz    the libFuzzer harnesses for FUZZ_SECONDS (default 600) each
#   make demo    plug a virtual module and capture through the daemon
#   make deb     the Debian package, in build/deb (lintian-clean)
#   make stress  10 000 hot-plug cycles with modcam-stress

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
NATIVE_SRC := $(wildcard native/*.c native/*.h native/*.cdef) native/build_native.py
NATIVE_SO := daemon/modcam/_native.abi3.so
ASAN_DIR := build/asan
FUZZ_DIR := build/fuzz
FUZZ_SECONDS ?= 600
FUZZ_CI_SECONDS ?= 25
ASAN_LIB = $(shell gcc -print-file-name=libasan.so)
# pytest and every process it starts run under the umockdev preload, so that
# uevents sent by the tests reach the daemon (see tests/conftest.py).
PYTEST := umockdev-wrapper $(PY) -m pytest

.PHONY: all setup system build asan test test-asan fuzz fuzz-ci bench demo stress clean

all: build

system:
	@scripts/setup-system

$(VENV)/.stamp-deps: pyproject.toml setup.py | system
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@$(PY) -m pip install -q -e '.[test]'
	@touch $@

$(NATIVE_SO): $(NATIVE_SRC) $(VENV)/.stamp-deps
	@$(PY) setup.py -q build_ext --inplace >/dev/null
	@touch $@

setup: $(VENV)/.stamp-deps $(NATIVE_SO)
build: setup

# The same extension built with AddressSanitizer and UBSan (DESIGN.md lists the pitfalls).
$(ASAN_DIR)/.stamp: $(NATIVE_SRC) $(VENV)/.stamp-deps
	@rm -rf $(ASAN_DIR)
	@MODCAM_SANITIZE=1 $(PY) setup.py -q build_ext --build-lib $(ASAN_DIR) \
	  --build-temp $(ASAN_DIR)/tmp --force >/dev/null
	@touch $@
asan: $(ASAN_DIR)/.stamp

# The ring's own tests, then the whole integration suite (modcamd, the virtual
# modules and the tools as child processes, all over the sanitizer build).
# libasan comes first in LD_PRELOAD, before umockdev's; libstdc++ is preloaded
# so that ASan finds __cxa_throw for C++ extensions loaded later (matplotlib).
# Children started through umockdev-wrapper put its library first again, hence
# verify_asan_link_order=0. Latency bounds are stretched (tests/support/timing.py)
# and memory bounds deselected (ASan keeps freed memory in quarantine).
ASAN_ENV = MODCAM_NATIVE_DIR=$(CURDIR)/$(ASAN_DIR)/modcam PYTHONMALLOC=malloc \
  ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:verify_asan_link_order=0 \
  UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
STDCXX_LIB = $(shell gcc -print-file-name=libstdc++.so.6)
test-asan: setup asan
	$(ASAN_ENV) LD_PRELOAD=$(ASAN_LIB) $(PY) -m pytest -q -m asan tests/unit tests/stress
	$(ASAN_ENV) MODCAM_TEST_SLOWDOWN=5 LD_PRELOAD=$(ASAN_LIB):$(STDCXX_LIB):libumockdev-preload.so.0 \
	  $(PY) -m pytest -q -m "not rss" tests/integration tests/test_readme.py

$(FUZZ_DIR)/%: native/fuzz/%.c $(NATIVE_SRC)
	@mkdir -p $(FUZZ_DIR)
	@clang -g -O1 -std=gnu11 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
	  -Inative $< native/modcam_ring.c native/modcam_ring_consumer.c native/crc32c.c -o $@
FUZZERS := $(patsubst native/fuzz/%.c,$(FUZZ_DIR)/%,$(wildcard native/fuzz/fuzz_*.c))

fuzz-ci: $(FUZZERS)
	@for f in $(FUZZERS); do \
	  mkdir -p $(FUZZ_DIR)/corpus-$$(basename $$f); \
	  echo "fuzzing $$(basename $$f) for $(FUZZ_CI_SECONDS) s"; \
	  $$f -max_total_time=$(FUZZ_CI_SECONDS) -print_final_stats=0 -close_fd_mask=3 \
	    $(FUZZ_DIR)/corpus-$$(basename $$f) native/fuzz/seeds 2>$(FUZZ_DIR)/$$(basename $$f).log \
	    || { tail -60 $(FUZZ_DIR)/$$(basename $$f).log; exit 1; }; \
	done
fuzz: FUZZ_CI_SECONDS = $(FUZZ_SECONDS)
fuzz: fuzz-ci

test: setup asan fuzz-ci
	$(PYTEST)
	$(MAKE) --no-print-directory test-asan

# Peers (OpenCV, colour-demosaicing, rawpy) are only for the benchmarks.
$(VENV)/.stamp-bench: pyproject.toml | $(VENV)/.stamp-deps
	@$(PY) -m pip install -q -e '.[test,bench]'
	@touch $@

bench: setup $(VENV)/.stamp-bench
	@for b in bench/*.py; do echo "== $$b"; umockdev-wrapper $(PY) $$b $(BENCH_ARGS) || exit 1; done

# A private bus, modcamd and a virtual 100 MP module: plug, capture JPEG + DNG, unplug.
demo: setup
	umockdev-wrapper $(PY) scripts/demo.py $(DEMO_ARGS)

# 10 000 plug/unplug cycles under modcamd with 4 clients; report in build/stress/.
stress: setup
	umockdev-wrapper $(PY) -m modcam.stress.cli --cycles 10000 --clients 4 --seed $${SEED:-1} --out build/stress

clean:
	rm -rf build $(NATIVE_SO) daemon/modcam/_native.c *.egg-info daemon/*.egg-info

# make deb: the Debian package (packaging/debian, built in build/deb)
include packaging/deb.mk
