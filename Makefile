# Two commands do all set-up on a fresh machine (Python 3.10+):
#   make demo   - venv + install + synthetic dataset + shard -> train (DALI) -> predict -> couplings plot
#   make test   - venv + install + the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
DEMO   ?= demo
ARGS   ?=

.PHONY: demo demo-compare test test-all bench install lint clean gpu-check

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,dicom,deploy,yaml]'
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

# The refiner ablation on the demo's folds: the same run with --no-refiner, then a paired comparison (after make demo)
demo-compare: install
	$(PY) -m cxr_fast.cli.train --shards $(DEMO)/shards --pipeline dali --model resnet18 --no-pretrained \
	    --img_size 128 --epochs 6 --batch_size 32 --lr 1e-3 --ema_decay 0.99 --num_workers 2 --no-refiner \
	    --out_dir $(DEMO)/outputs_norefiner --out_csv $(DEMO)/submission_norefiner.csv $(ARGS)
	$(PY) -m cxr_fast.cli.compare $(DEMO)/outputs $(DEMO)/outputs_norefiner --out $(DEMO)/compare.json

test: install
	$(PY) -m pytest -q

test-all: install
	$(PY) -m pytest -q -m ""

bench: install
	$(PY) benchmarks/throughput.py $(ARGS)

# on a CUDA machine: cxr-doctor + the GPU tests + GPU benchmark rows, one table (rows without CUDA: 'not measured here')
gpu-check:
	python3 tools/gpu_check.py

lint: install
	$(VENV)/bin/ruff check cxr_fast tests benchmarks tools

clean:
	rm -rf $(DEMO) outputs submission.csv .pytest_cache
