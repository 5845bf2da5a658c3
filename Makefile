# mnist-lab: `make report` is the main job, `make test` the test suite.
# Both set up everything they need on a fresh clone (a virtual environment in .venv).

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
PROFILE ?= full
# The calibration studies' runs: read from frozen/ (frozen), or trained here (train).
STUDIES ?= frozen

.PHONY: setup tex browser report test bench gpu-check gpu-wheels clean lab

setup: $(VENV)/.installed

# Re-installs only when the pins change.
$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	# notebooks/ stays committed without outputs, whatever JupyterLab saves (.gitattributes names the filter)
	if git rev-parse --git-dir >/dev/null 2>&1; then \
	  git config filter.nbstripout.clean '"$(abspath $(BIN))/nbstripout" --keep-id' && \
	  git config filter.nbstripout.smudge cat && git config filter.nbstripout.required true; fi
	touch $@

# JupyterLab on the notebooks, with this project's environment as their kernel. What a notebook
# explored here writes goes to artifacts/PROFILE/scratch/, never into the report's files.
lab: setup
	$(BIN)/jupyter lab --notebook-dir=notebooks

# TeX for the report: checks it is there; installs Debian's packages with apt-get when
# missing and run as root, otherwise prints what to install and stops.
tex:
	report/install-tex.sh

# Chromium and ChromeDriver for the browser tests of the HTML pages (same rules as `tex`).
browser:
	tests/install-browser.sh

# The main job: run the notebooks (training runs are cached by fingerprint, so a re-run with
# nothing changed trains nothing), then build artifacts/$(PROFILE)/report.pdf (latexmk rebuilds
# only when an input changed). `make report PROFILE=smoke` for a quick check.
report: setup tex
	$(BIN)/mnist-lab run --profile $(PROFILE) --studies $(STUDIES)
	$(BIN)/mnist-lab report --profile $(PROFILE)

# Lint and the layers of the flow first (seconds), then the suite.
test: setup
	$(BIN)/ruff check mnist_lab tests
	$(BIN)/lint-imports
	$(BIN)/python -m pytest

# Trainer vs the usual DataLoader loop on the four models (a few minutes on 2 cores);
# writes artifacts/bench/bench.json. BENCH_ARGS="--images 512 --repeats 1" for a quick look.
bench: setup
	$(BIN)/mnist-lab bench $(BENCH_ARGS)

# On a machine with a CUDA GPU, inside 8 minutes: the device tests, every notebook under papermill
# with the studies trained (several runs at once on the GPU), artifacts/full packed for
# `mnist-lab unpack` + `mnist-lab report` elsewhere, what side by side buys, the report's schedule;
# then what time is left allows. One table and JSON. Needs no .venv (GPU machines bring their own
# torch; extra packages may come on PYTHONPATH); without CUDA it says so and exits 2.
# GPU_CHECK_ARGS="--profile smoke --budget 200" for a quick look.
GPU_PYTHON ?= $(shell test -x $(BIN)/python && echo $(BIN)/python || echo python3)
gpu-check:
	PYTHONPATH=$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH} $(GPU_PYTHON) -m mnist_lab.bench.gpu_check $(GPU_CHECK_ARGS)

# For a GPU machine without network that has torch but not the notebooks' packages: those it
# lacked on an H200 (Python 3.12, torch 2.11), as wheels for its Python at the versions this
# .venv tests, into wheels/ (about 18 MB). There: pip install --no-index --no-deps --target DIR
# wheels/*.whl, with DIR on PYTHONPATH (README, "On a GPU").
GPU_PYTHON_VERSION ?= 3.12
GPU_WHEELS = papermill nbformat nbclient jupyter-client jupyter-core ipykernel ipython ipython-pygments-lexers \
  traitlets pyzmq tornado comm debugpy matplotlib-inline nest-asyncio2 jedi parso prompt-toolkit wcwidth \
  pexpect ptyprocess stack-data executing asttokens pure-eval fastjsonschema jsonschema \
  jsonschema-specifications referencing rpds-py platformdirs entrypoints tenacity nbconvert bleach tinycss2 \
  webencodings mistune pandocfilters defusedxml jupyterlab-pygments beautifulsoup4 soupsieve latex2mathml \
  ipywidgets widgetsnbextension jupyterlab-widgets
gpu-wheels: setup
	$(BIN)/python -m pip freeze | $(BIN)/python -c 'import re, sys; wanted = set(sys.argv[1:]); \
	  print("\n".join(line.strip() for line in sys.stdin if re.sub(r"[-_.]+", "-", line.split("==")[0]).lower() in wanted))' \
	  $(GPU_WHEELS) > $(VENV)/gpu-wheels.txt
	@test $$(wc -l < $(VENV)/gpu-wheels.txt) -eq $(words $(GPU_WHEELS)) || \
	  { echo "gpu-wheels: $(VENV) lacks some of: $(GPU_WHEELS)"; exit 1; }
	$(BIN)/python -m pip download --quiet --no-deps --only-binary=:all: --python-version $(GPU_PYTHON_VERSION) \
	  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
	  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
	  -d wheels -r $(VENV)/gpu-wheels.txt

clean:
	rm -rf artifacts report/build
