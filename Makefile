# Two commands: `make run` (the main job) and `make test` (the suite). Each installs what it needs into .venv.
# Torch: CPU wheel by default; a CUDA user sets e.g. TORCH="torch==2.13.0 --index-url <their CUDA wheel index>".
PY    ?= python3
VENV  := .venv
BIN   := $(VENV)/bin
TORCH ?= torch==2.13.0
export PYTHONUNBUFFERED := 1

.PHONY: install run test sync nbtest pytest readme bench clean

install: $(VENV)/.installed

$(VENV)/.installed: settings.ini setup.py
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[dev,faces]"
	touch $@

run: install
	$(BIN)/disentangle run reproduce

# Fails when the notebooks, the package and the README are out of sync (clean, export and readme change nothing).
sync: install
	@h() { find nbs disentangle README.md -type f -not -path '*/__pycache__/*' -not -path '*/.ipynb_checkpoints/*' | LC_ALL=C sort | xargs sha1sum | sha1sum; }; \
	before=$$(h); $(BIN)/nbdev_clean && $(BIN)/nbdev_export && $(MAKE) -s readme; after=$$(h); \
	if [ "$$before" != "$$after" ]; then \
	  echo "ERROR: nbdev_clean/nbdev_export/readme changed files: notebooks, package and README were out of sync."; \
	  echo "Commit the regenerated files:"; git status --short nbs disentangle README.md; exit 1; fi; \
	echo "notebooks, package and README in sync"

readme: install
	@$(BIN)/jupyter nbconvert --log-level=ERROR --to markdown nbs/index.ipynb --output-dir . --output README

nbtest: install
	OMP_NUM_THREADS=1 $(BIN)/nbdev_test --n_workers 2 --timing --flags slow

pytest: install
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest tests -q -n auto --timeout 900 --durations 8

test: sync nbtest pytest

bench: install
	$(BIN)/python bench/synthfaces.py

clean:
	rm -rf $(VENV) build dist *.egg-info
