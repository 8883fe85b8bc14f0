# Two commands for a fresh machine (Python 3.11 only):  make demo   and   make test
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
# DVC runs from its own tool environment: `dvc exp run -S` needs hydra's antlr4 4.9, Dagster needs 4.13.
# Only its `dvc` is put on PATH (through a one-file shim dir), ahead of .venv, so `python`/`slmrec` stay .venv's.
DVC_VENV := .venv-dvc
DVC_SHIM := $(DVC_VENV)/shim
export PATH := $(abspath $(DVC_SHIM)):$(abspath $(BIN)):$(PATH)
export SLMREC_DVC := $(abspath $(DVC_VENV)/bin/dvc)
export DVC_NO_ANALYTICS := 1
export DAGSTER_HOME ?= $(abspath .dagster_home)

.PHONY: install demo test ui bench lock lock-dvc clean chromium replay

# The venvs are (re)built when pyproject.toml or a lock changes. uv installs the pinned sets (parallel
# downloads: ~1 min here instead of pip's ~5); pip installs torch first, because pip's configuration is
# what points at a machine's local CPU build of torch (uv does not read it), and uv then keeps that torch.
UV := uv==0.13.9
$(BIN)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(UV)
	$(BIN)/pip install -q -c requirements.lock torch
	$(BIN)/uv pip install -q --python $(BIN)/python -c requirements.lock -e '.[dev]'
	# Dagster 1.13's asset-selection parser needs antlr4 4.13; DVC's hydra pins 4.9 (used only by `dvc exp run -S`)
	$(BIN)/uv pip install -q --python $(BIN)/python --no-deps antlr4-python3-runtime==4.13.2
	rm -f $(BIN)/dvc  # one DVC CLI: .venv-dvc/bin/dvc (this venv's would fail on `exp run -S`, the antlr clash)
	touch $@

# One DVC: .venv-dvc/bin/dvc is a wrapper that puts .venv/bin first on PATH (the stage commands are `slmrec ...`)
# and runs the real CLI (dvc.real), so `.venv-dvc/bin/dvc exp run -S ...` works from any shell; .venv's own
# `dvc` script (the package is a dependency of slmrec, for `python -m dvc`) is removed so no second CLI exists.
$(DVC_VENV)/.installed: requirements-dvc.lock
	$(PYTHON) -m venv $(DVC_VENV)
	$(DVC_VENV)/bin/pip install -q $(UV)
	$(DVC_VENV)/bin/uv pip install -q --python $(DVC_VENV)/bin/python -r requirements-dvc.lock
	mv -f $(DVC_VENV)/bin/dvc $(DVC_VENV)/bin/dvc.real
	printf '#!/bin/sh\n# DVC for this project: stage commands run with the project venv first on PATH\nroot="$$(cd "$$(dirname "$$0")/../.." && pwd)"\nPATH="$$root/.venv/bin:$$PATH" DVC_NO_ANALYTICS=1 exec "$$root/$(DVC_VENV)/bin/dvc.real" "$$@"\n' > $(DVC_VENV)/bin/dvc
	chmod +x $(DVC_VENV)/bin/dvc
	mkdir -p $(DVC_SHIM) && ln -sf ../bin/dvc $(DVC_SHIM)/dvc
	touch $@

install: $(BIN)/.installed $(DVC_VENV)/.installed

## The main job: the whole pipeline on MovieLens-100K (embedded default), then the results table.
# torch threads per process: the float summation order depends on it, so the committed results reproduce to
# the last digit only with the same counts. A stage that runs alone gets DEMO_THREADS (2: this box's two
# cores; `make demo DEMO_THREADS=1` on a box where other jobs run, where two threads can be slower), the
# two stages that run at once get one each. Override: make demo DEMO_THREADS=8
DEMO_THREADS ?= 2
demo: install
	OMP_NUM_THREADS=$(DEMO_THREADS) dvc repro teacher
	# the distilled student (needs the teacher) and student_nokd (needs only SASRec) train at once, one core
	# each (`dvc repro` runs stages one at a time); both are recorded in dvc.lock (`dvc commit -f`), so the
	# `dvc repro` below skips them and runs the evaluation
	OMP_NUM_THREADS=1 $(BIN)/slmrec parallel-stages student student_nokd
	OMP_NUM_THREADS=$(DEMO_THREADS) dvc repro
	$(BIN)/slmrec report --params params.yaml
	# the promotion gate (Dagster asset promoted_model, on validation CIs): writes models/promoted.json, which
	# `slmrec serve` deploys; a refusal is an outcome of the demo, printed, not an error of the pipeline
	mkdir -p $(DAGSTER_HOME) && cp orchestration/dagster.yaml $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dagster asset materialize -m orchestration.definitions --select promoted_model > results/promotion.log 2>&1 \
	  && echo "promoted: $$(cat models/promoted.json | $(BIN)/python -c 'import json,sys; r=json.load(sys.stdin); print(r["model"], r["content_hash"][:12], "deployed in", r["deployment"], r["warnings"] or "no warnings")')" \
	  && echo "serve it:  .venv/bin/slmrec serve    (then: curl 'localhost:8000/recommend/196?k=10')" \
	  || { grep -h "refused\|Error" results/promotion.log | tail -3; echo "PROMOTION REFUSED: models/promoted.json unchanged (full log: results/promotion.log)"; }

## The tests (CI runs this through .ci/run).
test: install chromium
	$(BIN)/pytest -q -p no:cacheprovider

## Dagster UI on http://localhost:3000
ui: install
	mkdir -p $(DAGSTER_HOME)
	cp orchestration/dagster.yaml $(DAGSTER_HOME)/dagster.yaml
	# code servers wait up to 60 s for in-flight RPCs when stopped; 5 s lets Ctrl-C stop everything promptly.
	# SIGINT back to its default before exec: started in the background (`make ui &` from a script, nohup, CI)
	# it is inherited ignored, and dagster dev then ignores SIGTERM too and never stops (docs/RELIABILITY.md)
	DAGSTER_GRPC_SHUTDOWN_GRACE_PERIOD=5 $(BIN)/python -c 'import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])' \
		$(BIN)/dagster dev -h 127.0.0.1 -p 3000

## Benchmarks (print tables; run `make demo` first so the model bench can show test metrics)
bench: install
	$(BIN)/python bench/bench_data.py
	$(BIN)/python bench/bench_models.py --profile smol
	$(BIN)/python bench/bench_levers.py --splits data/splits
	$(BIN)/python bench/bench_inference.py --splits data/splits --models models

## Refresh the pinned dependency set after editing pyproject.toml.
lock:
	$(BIN)/pip freeze --exclude-editable | sed -e 's/^torch==\(.*\)+cpu/torch==\1/' > requirements.lock

## Refresh the DVC tool environment's pins (after changing the dvc version in requirements-dvc.lock by hand).
lock-dvc:
	{ sed -n '1,2p' requirements-dvc.lock; $(DVC_VENV)/bin/pip freeze; } > requirements-dvc.lock.new
	mv requirements-dvc.lock.new requirements-dvc.lock

clean:
	# deployments are read-only (models/deployed/<hash>/): writable again before they can be removed
	test ! -d models/deployed || chmod -R u+w models/deployed
	rm -rf data models results/cache .dagster_home

## Debian's chromium for the browser tests and screenshots (Playwright drives it; no browser download)
chromium:
	@test -x /usr/bin/chromium || (apt-get update -qq && apt-get install -y -qq chromium)

## Monitoring replay on ML-100K through the Dagster definitions (README "Monitoring"): calibrate the thresholds on
## honest Dec 1997 + Jan 1998, count false alarms on honest Nov 1997 and Feb, Mar, Apr 1998, on the held-out month
## tails (days 22+, which no other replay monitors) and on 1997-10-01..14 (no replay had monitored it before the
## probe score rule; registered before it ran), then plant each shift in Feb 1998
REPLAY := OMP_NUM_THREADS=1 $(BIN)/python -m orchestration.replay
replay: install
	for c in 1997-12-01 1998-01-01; do $(REPLAY) calibrate --cutoff $$c --start $$c --days 21 --out results/replay/calibration/$$c; done
	$(REPLAY) thresholds --from results/replay/calibration/1997-12-01/replay.json results/replay/calibration/1998-01-01/replay.json --out results/replay/thresholds.json
	for c in 1997-11-01 1998-02-01 1998-03-01 1998-04-01; do $(REPLAY) run --scenario honest --cutoff $$c --start $$c --days 21 --thresholds results/replay/thresholds.json --out results/replay/honest/$$c; done
	for t in 1997-10-15:17 1997-11-22:9 1997-12-22:10 1998-01-22:10 1998-02-22:7 1998-03-22:10; do c=$${t%%:*}; $(REPLAY) run --scenario honest --cutoff $$c --start $$c --days $${t##*:} --thresholds results/replay/thresholds.json --out results/replay/heldout/$$c; done
	$(REPLAY) run --scenario honest --cutoff 1997-10-01 --start 1997-10-01 --days 14 --thresholds results/replay/thresholds.json --out results/replay/unseen/1997-10-01
	for s in cold_ids taste popularity degraded pipeline; do $(REPLAY) run --scenario $$s --cutoff 1998-02-01 --start 1998-02-01 --days 21 --shift-day 8 --thresholds results/replay/thresholds.json --out results/replay/$$s; done
	$(REPLAY) table --from results/replay --out results/replay/table.md
