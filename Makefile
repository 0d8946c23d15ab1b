# The two commands of a fresh machine (see README.md):
#   make reproduce   prints its plan, reuses the committed results and released weights, trains what is missing,
#                    writes every table and redraws every figure; `make reproduce RETRAIN=1` retrains the default rows
#   make test        checks the export, runs every notebook's tests and the property tests
# Both set up .venv first; running them again reuses it.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The data folder (see nbs/05_data.ipynb): ../shared/data where it exists, unless already set.
ifneq ($(wildcard ../shared/data),)
export IAF_REPRO_DATA ?= $(abspath ../shared/data)
endif

.PHONY: setup reproduce test export clean-nbs docs screenshots hooks

$(STAMP): settings.ini setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch 2.13.0 is pinned where none is installed: an unpinned torch pulls gigabytes of CUDA wheels.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e ".[dev]"
	# MathJax for the site, into ~/.cache/iaf_repro, so `make docs` runs offline; without network a note, and docs fetches it.
	$(BIN)/python tools/build_site.py --fetch-mathjax
	touch $(STAMP)

setup: $(STAMP)

# RETRAIN=1: train the default rows and figure models again from scratch (iaf-repro reproduce --retrain).
# REFIT=1: fit the chapters' own figure fits again instead of drawing them from figures/fits (iaf-repro reproduce --refit).
# THREADS=1: torch threads of the training; UNTIL=2h30m: start no epoch that would end after that long (the same command resumes).
RETRAIN ?=
REFIT ?=
THREADS ?=
UNTIL ?=
reproduce: setup
	$(BIN)/iaf-repro reproduce $(if $(RETRAIN),--retrain) $(if $(REFIT),--refit) $(if $(THREADS),--threads $(THREADS)) $(if $(UNTIL),--until $(UNTIL))

test: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" bash tools/check_notebooks.sh
	# Two notebooks run at once on two cores: one thread each, or OpenMP threads fight and small ops slow 10-60x.
	OMP_NUM_THREADS=1 $(BIN)/nbdev_test --n_workers 2
	$(BIN)/pytest -q tests

# For authors: regenerate iaf_repro/ from the notebooks and strip notebook metadata noise.
export: setup
	$(BIN)/nbdev_export
	$(BIN)/nbdev_clean

# The tutorial as a website, built offline into _site/ from the notebooks' committed outputs (tools/build_site.py;
# nbdev_docs needs Quarto, which these machines cannot install). Open _site/index.html, or serve it:
#   python -m http.server -d _site
docs: setup
	$(BIN)/python tools/build_site.py --out _site

# The README's two screenshots of the site (figures/site_*.png), taken with headless Chromium (apt-get install chromium).
screenshots: docs
	$(BIN)/python tools/site_browser.py screenshots --site _site --out figures

# For authors: a git pre-commit hook that refuses notebooks nbdev_clean would change (tools/hooks/pre-commit).
hooks: setup
	git config core.hooksPath tools/hooks

# Speed of the Table 1 models on this machine (chapter 95): training, IS evaluation, sampling, FLOPs vs the
# measured matmul peak. About 15 minutes on 2 quiet cores; writes figures/tables/bench*.csv and figures/bench_throughput.png.
.PHONY: bench
BENCH_THREADS ?= 2
bench: setup
	$(BIN)/iaf-repro bench --threads $(BENCH_THREADS)
