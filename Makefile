# Thin wrapper over CMake; the README's two commands are `make run` and `make test`.
BUILD   ?= build
JOBS    ?= $(shell nproc)
NP      ?= 2
CMAKE_ARGS ?=
# OpenMPI refuses root without these; harmless otherwise. Oversubscription lets tests run more ranks than cores.
export OMPI_ALLOW_RUN_AS_ROOT = 1
export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM = 1
export OMPI_MCA_rmaps_base_oversubscribe = 1

.PHONY: all deps deps-test deps-demo build run test bench clean

all: build

deps:
	@tools/bootstrap.sh

deps-test:
	@tools/bootstrap.sh --test

deps-demo:
	@tools/bootstrap.sh --demo

# Configure once (or when CMAKE_ARGS is given); afterwards CMake re-configures itself when CMakeLists change.
# A new build folder uses Ninja when it is there (the bootstrap installs it): it schedules the per-layer libraries
# and test executables with less overhead than make on 2 cores. An existing folder keeps its generator.
build: deps
	@if [ ! -f $(BUILD)/CMakeCache.txt ]; then \
	  cmake -S . -B $(BUILD) $$(command -v ninja >/dev/null && echo "-G Ninja") -DCMAKE_BUILD_TYPE=Release $(CMAKE_ARGS); \
	elif [ -n "$(CMAKE_ARGS)" ]; then cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release $(CMAKE_ARGS); fi
	@cmake --build $(BUILD) -j $(JOBS)

# The bundled default job: a small DiT trained on the bundled digits with NP ranks, a grid of samples, the loss
# curve and a quality score, in out/digits/ (tools/digits_demo.sh; RUN_ARGS="--set key=value ..." overrides the deck).
# DEMO=video: the moving-digits text-to-video demo (tools/video_demo.sh: 4 ranks, sp 2 x dp 2; out/moving_digits/).
DEMO ?= digits
run: deps-demo build
	@if [ "$(DEMO)" = video ]; then BUILD=$(BUILD) tools/video_demo.sh $(RUN_ARGS); \
	elif [ "$(DEMO)" = digits ]; then NP=$(NP) BUILD=$(BUILD) tools/digits_demo.sh $(RUN_ARGS); \
	else echo "make run: DEMO=$(DEMO): expected digits (default) or video" >&2; exit 2; fi

test: deps-test build
	ctest --test-dir $(BUILD) --output-on-failure

# Benchmarks with their peer in the same run (figures go to bench/RESULTS.md by hand, with device, date, commit).
bench: deps-test build
	bench/forward.sh DiT-S/2 8 fp32 cpu

clean:
	rm -rf $(BUILD)
