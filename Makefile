# Two commands do all set-up on a fresh machine (Python 3.10+):
#   make demo   - venv + install + synthetic dataset + shard -> train (DALI) -> predict -> couplings plot
#   make test   - venv + install + the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
DEMO   ?= demo
ARGS   ?=

.PHONY: demo demo-compare test test-slow test-all bench install lint clean gpu-check

# DALI comes as an extra per CUDA major, picked from the torch just installed (torch.version.cuda): dali-cu13 for
# CUDA 13, dali-cu12 for CUDA 12 or a CPU-only torch. DALI_EXTRA=dali-cu12|dali-cu13 forces one, DALI_EXTRA=none
# keeps whatever DALI is there (NGC containers ship it). The other build goes first: both own nvidia/dali/.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,dicom,deploy,yaml,tensorboard]'
	export DALI_EXTRA='$(DALI_EXTRA)' && extra=$$($(PY) -m cxr_fast.versions dali-extra) && \
	  remove=$$($(PY) -m cxr_fast.versions dali-remove) && \
	  if [ -n "$$extra" ]; then echo "DALI: .[$$extra] ($$($(PY) -m cxr_fast.versions torch-cuda))"; \
	    if [ -n "$$remove" ]; then $(PY) -m pip uninstall -q -y $$remove; fi; \
	    $(PY) -m pip install -q -e ".[dev,dicom,deploy,yaml,tensorboard,$$extra]"; fi
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m cxr_fast.cli.synth --out $(DEMO)/data --n_train 600 --n_test 100 --size 256 --seed 0 --overwrite
	$(PY) -m cxr_fast.cli.shard --train_csv $(DEMO)/data/train.csv --train_dir $(DEMO)/data/train \
	    --test_dir $(DEMO)/data/test --out $(DEMO)/shards --folds 3 --seed 42 --resize 256 --overwrite
	$(PY) -m cxr_fast.cli.train --shards $(DEMO)/shards --pipeline dali --model resnet18 --no-pretrained \
	    --img_size 128 --epochs 6 --batch_size 32 --lr 1e-3 --ema_decay 0.99 --num_workers 2 \
	    --out_dir $(DEMO)/outputs --out_csv $(DEMO)/submission.csv $(ARGS)
	$(PY) -m cxr_fast.cli.predict --checkpoints "$(DEMO)/outputs/resnet18_fold*.pth" --test_dir $(DEMO)/data/test \
	    --pipeline pil --num_workers 2 --out_csv $(DEMO)/submission_predict.csv
	$(PY) -m cxr_fast.cli.couplings $(DEMO)/outputs/resnet18_fold*.pth --out $(DEMO)/couplings.png
	$(PY) -m cxr_fast.cli.eval --pred $(DEMO)/submission.csv --truth $(DEMO)/data/test_labels.csv \
	    --thresholds $(DEMO)/outputs/thresholds.json --out $(DEMO)/eval.json --report $(DEMO)/eval.html
	@echo
	@echo "demo outputs:"
	@echo "  synthetic data      $(DEMO)/data (train.csv, train/, test/, test_labels.csv, couplings.json)"
	@echo "  shards              $(DEMO)/shards (manifest.json, fold*-*.tar + .idx, test-*.tar + .idx)"
	@echo "  checkpoints + logs  $(DEMO)/outputs (resnet18_fold*.pth, oof.csv, cv_summary.json, metrics.jsonl)"
	@echo "  submission          $(DEMO)/submission.csv (cxr-train), $(DEMO)/submission_predict.csv (cxr-predict)"
	@echo "  couplings           $(DEMO)/couplings.png, $(DEMO)/couplings.json"
	@echo "  evidence            $(DEMO)/outputs/report.html (CV, OOF CIs, thresholds), $(DEMO)/eval.json + eval.html (test set)"

# The refiner ablation on the demo's folds, 2 training seeds per arm (after make demo, whose run is the refiner arm's
# seed 42): 3 more runs (seed 7 with the refiner, seeds 42 and 7 without; ~7.5 min on 2 CPU cores), then a paired
# within-fold comparison with both intervals (docs/evidence.md). The folds come from the shards: every run shares them.
DEMO_TRAIN = $(PY) -m cxr_fast.cli.train --shards $(DEMO)/shards --pipeline dali --model resnet18 --no-pretrained \
	    --img_size 128 --epochs 6 --batch_size 32 --lr 1e-3 --ema_decay 0.99 --num_workers 2
demo-compare: install
	$(DEMO_TRAIN) --seed 7 --out_dir $(DEMO)/outputs_seed7 --out_csv $(DEMO)/submission_seed7.csv $(ARGS)
	$(DEMO_TRAIN) --no-refiner --seed 42 --out_dir $(DEMO)/outputs_norefiner \
	    --out_csv $(DEMO)/submission_norefiner.csv $(ARGS)
	$(DEMO_TRAIN) --no-refiner --seed 7 --out_dir $(DEMO)/outputs_norefiner_seed7 \
	    --out_csv $(DEMO)/submission_norefiner_seed7.csv $(ARGS)
	$(PY) -m cxr_fast.cli.compare --a $(DEMO)/outputs $(DEMO)/outputs_seed7 \
	    --b $(DEMO)/outputs_norefiner $(DEMO)/outputs_norefiner_seed7 --out $(DEMO)/compare.json

# two pytest-xdist workers: the suite's subprocess and decode waits overlap on a 2-core machine. `test` is the default
# suite; `test-slow` the slow tier (torchrun jobs, training runs killed or signalled from outside); .ci/run runs both.
# `test-all`: both tiers and the CUDA tests in one session.
test: install
	$(PY) -m pytest -q -n 2

test-slow: install
	$(PY) -m pytest -q -n 2 -m "slow and not gpu"

test-all: install
	$(PY) -m pytest -q -n 2 -m ""

bench: install
	$(PY) -m benchmarks.throughput $(ARGS)

# on a CUDA machine: cxr-doctor + the GPU tests + GPU benchmark rows, one table (rows without CUDA: 'not measured here')
gpu-check:
	$$(test -x $(PY) && echo $(PY) || echo python3) tools/gpu_check.py $(ARGS)

lint: install
	$(VENV)/bin/ruff check cxr_fast tests benchmarks tools

clean:
	rm -rf $(DEMO) outputs submission.csv .pytest_cache
