# The two commands of the README: `make run` and `make test`. Both install what is missing first.
VENV   ?= $(or $(MAMBADIFF_VENV),$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/mambadiff/venv)
BUILD  ?= build
JOBS   ?= $(shell nproc)
export MAMBADIFF_VENV := $(VENV)

.PHONY: setup configure build run test clean

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
	rm -rf $(BUILD)
