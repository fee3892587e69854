# The two commands of the README: `make run` and `make test`, and the nightly `make fuzz`. All install
# what is missing first.
VENV   ?= $(or $(MAMBADIFF_VENV),$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/mambadiff/venv)
BUILD  ?= build
JOBS   ?= $(shell nproc)
export MAMBADIFF_VENV := $(VENV)

# make fuzz: the libFuzzer targets (clang, ASan, UBSan) in their own folder, then a campaign over
# them driven by $(BUILD)/mambadiff fuzz, writing $(FUZZ_OUT)/summary.json. The targets are -O2
# (executions per second are what a campaign buys; the test build's -O1 is for build time).
FUZZ_BUILD ?= build-fuzz
FUZZ_TIME  ?= 600
FUZZ_JOBS  ?= $(JOBS)
FUZZ_OUT   ?= fuzz-out

.PHONY: setup configure build run test clean fuzz-setup fuzz-build fuzz

setup:
	@scripts/setup.sh

$(BUILD)/build.ninja: CMakeLists.txt
	cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release \
	  -DMAMBADIFF_PYTHON=$(VENV)/bin/python \
	  -DCMAKE_PREFIX_PATH="$$($(VENV)/bin/python -c 'import torch;print(torch.utils.cmake_prefix_path)')"

configure: setup $(BUILD)/build.ninja

build: configure
	cmake --build $(BUILD) -j $(JOBS)

# `run` builds only the program it runs (not the test suite).
run: configure
	cmake --build $(BUILD) -j $(JOBS) --target mambadiff
	$(BUILD)/mambadiff check

test: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

clean:
	rm -rf $(BUILD) $(FUZZ_BUILD)

fuzz-setup:
	@scripts/setup.sh --fuzz

$(FUZZ_BUILD)/build.ninja: CMakeLists.txt
	cmake -S . -B $(FUZZ_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release -DMAMBADIFF_FUZZ=ON -DMAMBADIFF_HOST_OPT=-O2 \
	  -DCMAKE_C_COMPILER=clang-14 -DCMAKE_CXX_COMPILER=clang++-14 \
	  -DMAMBADIFF_PYTHON=$(VENV)/bin/python \
	  -DCMAKE_PREFIX_PATH="$$($(VENV)/bin/python -c 'import torch;print(torch.utils.cmake_prefix_path)')"

fuzz-build: setup fuzz-setup $(FUZZ_BUILD)/build.ninja
	cmake --build $(FUZZ_BUILD) -j $(JOBS)

fuzz: build fuzz-build
	$(BUILD)/mambadiff fuzz --time $(FUZZ_TIME) --jobs $(FUZZ_JOBS) --out $(FUZZ_OUT) --targets-dir $(FUZZ_BUILD)/fuzz \
	  --seeds-dir corpus/fuzz
