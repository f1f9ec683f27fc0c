# cosmonet: every target sets itself up (apt packages, .venv, Python packages) first.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
export OMPI_ALLOW_RUN_AS_ROOT := 1
export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM := 1
export OMPI_MCA_rmaps_base_oversubscribe := 1
DEMO_OUT ?= out/demo

# make setup EXTRAS=            the core alone (no MPI/FFTW needed: a GPU node without MPI)
# make setup WHEELHOUSE=dir      offline, from a wheelhouse that `make wheelhouse` wrote
WHEELHOUSE_OUT ?= wheelhouse

.PHONY: setup demo test test-fast bench clean horovod wheelhouse

setup:
	@bash scripts/setup_env.sh

# every wheel of the set-up (torch, the [mpi] and [test] extras, mpi4py-fft and Horovod as
# built here) for this Python, into $(WHEELHOUSE_OUT)/: see docs/install.md
wheelhouse: setup horovod
	@WHEELHOUSE= bash scripts/setup_env.sh --wheelhouse $(WHEELHOUSE_OUT)

demo: setup
	@mkdir -p $(DEMO_OUT)
	mpirun -np 2 $(VENV)/bin/cosmonet run-sim --nc 32 --box 128 --steps 10 --boost 2 --seed 42 \
	    --out $(DEMO_OUT)/sim.h5
	$(VENV)/bin/cosmonet power $(DEMO_OUT)/sim.h5 --field fastpm --second lpt2 \
	    --json $(DEMO_OUT)/power.json --plot $(DEMO_OUT)/power.png
	mpirun -np 2 $(VENV)/bin/cosmonet simulate configs/demo.yaml --out $(DEMO_OUT)/campaign
	$(VENV)/bin/cosmonet verify $(DEMO_OUT)/campaign
	mpirun -np 2 $(VENV)/bin/cosmonet simulate configs/demo_pairs.yaml --out $(DEMO_OUT)/pairs --quiet
	$(VENV)/bin/cosmonet evaluate configs/d3m_cpu.yaml --checkpoint d3m_cpu --set data.root=$(DEMO_OUT)/pairs \
	    --json $(DEMO_OUT)/emulator.json --plots $(DEMO_OUT)/emulator
	$(VENV)/bin/cosmonet emulate --checkpoint d3m_cpu --input $(DEMO_OUT)/sim.h5 --out $(DEMO_OUT)/emu.h5
	@echo "demo: wrote $(DEMO_OUT)/sim.h5, $(DEMO_OUT)/power.json, $(DEMO_OUT)/power.png, the campaign $(DEMO_OUT)/campaign,"
	@echo "demo: the shipped emulator d3m_cpu on 24 fresh pairs ($(DEMO_OUT)/emulator.json, figures in $(DEMO_OUT)/emulator/)"
	@echo "demo: and on the 32^3 simulation ($(DEMO_OUT)/emu.h5)"

# Horovod 0.28.1 built against this torch and OpenMPI (docs/horovod.md); ~10 minutes the
# first time, then installed from the wheel cache (or WHEELHOUSE) in seconds.
horovod: setup
	@bash scripts/build_horovod.sh $(VENV)

test: setup horovod
	$(PY) -m pytest tests -q -ra

test-fast: setup horovod
	$(PY) -m pytest tests -q -ra -m "not slow"

bench: setup
	$(PY) benchmarks/bench_sim.py

clean:
	rm -rf out .pytest_cache
