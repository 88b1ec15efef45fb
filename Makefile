# make            create .venv and install the project (CPU MXNet) with pinned versions
# make test       run the test suite (what CI runs)
# make demo       train a small CRU-Net on the bundled digits set, then score it
# make install MXNET=gpu   the same for a CUDA 11.2 cluster (mxnet-cu112 instead of mxnet)
# make bench      training/scoring throughput against the peers (installs the bench extra)
# make imagenet IMAGENET=/data/ILSVRC2012, make places365 PLACES365=/data/places365: pack RecordIO
PYTHON ?= python3.11
VENV   ?= .venv
MXNET  ?= cpu
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
STAMP  := $(VENV)/.installed-$(MXNET)
# onnxruntime 1.15.0 declares numpy>=1.24.2 yet runs on the numpy 1.23.5 that mxnet needs
ORT    := onnxruntime coloredlogs humanfriendly flatbuffers sympy mpmath

.PHONY: all install test demo bench graphviz clean imagenet places365
all: install

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): setup.py constraints.txt | $(PY)
	@if [ "$(MXNET)" != cpu ] && [ "$(MXNET)" != gpu ]; then echo "MXNET must be cpu or gpu, not '$(MXNET)'" >&2; exit 2; fi
	@if [ "$(MXNET)" = gpu ]; then $(PIP) uninstall -q -y mxnet; else $(PIP) uninstall -q -y mxnet-cu112; fi
	$(PIP) install -q -c constraints.txt -e ".[$(MXNET),test]"
	$(PIP) install -q --no-deps -c constraints.txt $(ORT)
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

graphviz:
	@command -v dot >/dev/null 2>&1 || { \
	  echo "graphviz 'dot' missing: installing Debian's graphviz"; \
	  (apt-get update -qq && apt-get install -y -qq graphviz >/dev/null) \
	  || echo "could not install graphviz (needs root and Debian's apt); graph drawing tests will be skipped" >&2; }

test: install graphviz
	$(PY) -m pytest -q tests

demo: install
	$(PY) train_imagenet.py
	$(PY) score.py --model runs/demo/crunet --epoch 4 --data-val runs/demo/data/digits_val.rec

bench: install
	$(PIP) install -q -c constraints.txt -e ".[$(MXNET),test,bench]"
	$(PY) -m bench.speed

# RecordIO for ImageNet-1k / Places365-Standard from their usual layouts (see data/README.md)
IMAGENET  ?= /data/ILSVRC2012
PLACES365 ?= /data/places365
imagenet: install
	data/imagenet.sh $(IMAGENET) runs/data/imagenet
places365: install
	data/places365.sh $(PLACES365) runs/data/places365

clean:
	rm -rf $(VENV) runs .pytest_cache
