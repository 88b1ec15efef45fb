# make            create .venv and install the project (CPU MXNet) with pinned versions
# make test       run the test suite (what CI runs)
# make demo       train a small CRU-Net on the bundled digits set, then score it
# make install MXNET=cu117 the same with MXNet's CUDA 11.7 build and the CUDA 11 libraries from pip
#                          (nvidia-*-cu11); MXNET=gpu is the same, MXNET=cu112 the CUDA 11.2 build.
#                          GPUs of compute capability 5.0 to 8.9 (Maxwell to Ada), not Hopper: README, "GPUs"
# make test-gpu   the tests marked gpu on the CUDA build (cu117 unless MXNET=cu112): they skip
#                 where no GPU the build can drive is present
# make gpu-install-check   install mxnet-cu117 and the nvidia-*-cu11 packages in a scratch venv
#                          (/tmp/cu117-venv), load the libraries as the commands do and ldd libmxnet.so
# make install HOROVOD=1   also build Horovod 0.28.1 (gloo, no MPI) against the venv's MXNet (make horovod)
# make slurm      install Debian's slurm-wlm and munge (root and apt; the Slurm tests start their own
#                 one-node cluster under a temporary directory)
# make bench      training/scoring throughput against the peers (installs the bench extra)
# make imagenet IMAGENET=/data/ILSVRC2012, make places365 PLACES365=/data/places365: pack RecordIO
PYTHON ?= python3.11
VENV   ?= .venv
MXNET  ?= cpu
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
BUILD  := $(if $(filter gpu,$(MXNET)),cu117,$(MXNET))
STAMP  := $(VENV)/.installed-$(BUILD)
# the MXNet builds (exactly one is installed) and the pip packages of the CUDA 11 libraries the
# CUDA builds link (versions pinned in constraints.txt)
MXNET_DISTS := mxnet mxnet-cu112 mxnet-cu117
MXNET_DIST   = $(if $(filter cpu,$(BUILD)),mxnet,mxnet-$(BUILD))
NVIDIA_CU11 := nvidia-cuda-runtime-cu11 nvidia-cublas-cu11 nvidia-cudnn-cu11 nvidia-nccl-cu11 \
               nvidia-cufft-cu11 nvidia-curand-cu11 nvidia-cusolver-cu11 nvidia-cusparse-cu11 \
               nvidia-cuda-nvrtc-cu11 nvidia-nvtx-cu11
GPU_VENV ?= /tmp/cu117-venv
HOROVOD ?= 0
HVD_STAMP := $(VENV)/.installed-horovod
# horovodrun's build switches: MXNet and gloo only (GPUs: README, "Horovod", HOROVOD_GPU_OPERATIONS=NCCL)
HOROVOD_ENV := HOROVOD_WITH_MXNET=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 HOROVOD_WITHOUT_TENSORFLOW=1 \
               HOROVOD_WITHOUT_PYTORCH=1
SLURM_PROGRAMS := munged slurmctld slurmd srun salloc sbatch scancel sinfo scontrol
# onnxruntime 1.15.0 declares numpy>=1.24.2 yet runs on the numpy 1.23.5 that mxnet needs
ORT    := onnxruntime coloredlogs humanfriendly flatbuffers sympy mpmath

.PHONY: all install horovod slurm test test-gpu gpu-install-check demo bench graphviz clean imagenet places365
all: install

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): setup.py constraints.txt | $(PY)
	@case "$(BUILD)" in cpu|cu112|cu117) ;; *) echo "MXNET must be cpu, cu112, cu117 or gpu (= cu117), not '$(MXNET)'" >&2; exit 2;; esac
	-$(PIP) uninstall -q -y $(filter-out $(MXNET_DIST),$(MXNET_DISTS)) 2>/dev/null
	$(PIP) install -q -c constraints.txt -e ".[$(BUILD),test,onnx]"
	$(PIP) install -q --no-deps -c constraints.txt $(ORT)
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP) $(if $(filter 1,$(HOROVOD)),$(HVD_STAMP))

# built without build isolation against the installed MXNet (pip keeps the built wheel in its cache)
$(HVD_STAMP): $(STAMP)
	@command -v cmake >/dev/null 2>&1 && command -v g++ >/dev/null 2>&1 || { \
	  echo "cmake/g++ missing: installing Debian's cmake and g++"; \
	  apt-get update -qq && apt-get install -y -qq cmake g++ >/dev/null; }
	$(PIP) install -q -c constraints.txt wheel
	$(HOROVOD_ENV) $(PIP) install -q --no-build-isolation -c constraints.txt horovod
	$(PY) -c "import horovod.mxnet"
	touch $@

horovod: $(HVD_STAMP)

slurm:
	@missing=""; for p in $(SLURM_PROGRAMS); do command -v $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "Slurm/munge missing ($$missing): installing Debian's slurmctld slurmd slurm-client munge"; \
	  (apt-get update -qq && apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null) \
	  || echo "could not install Slurm (needs root and Debian's apt); the Slurm tests will be skipped" >&2; \
	fi

graphviz:
	@command -v dot >/dev/null 2>&1 || { \
	  echo "graphviz 'dot' missing: installing Debian's graphviz"; \
	  (apt-get update -qq && apt-get install -y -qq graphviz >/dev/null) \
	  || echo "could not install graphviz (needs root and Debian's apt); graph drawing tests will be skipped" >&2; }

test: install horovod slurm graphviz
	$(PY) -m pytest -q tests

# on the CUDA build MXNET names (cu117 when MXNET is cpu); exit status 5 (no test collected) fails
# like any other: the gpu tests are collected and skip themselves where no usable GPU is present
test-gpu:
	$(MAKE) install MXNET=$(if $(filter cpu,$(BUILD)),cu117,$(BUILD))
	$(PY) -m pytest -q -m gpu tests/test_gpu.py

gpu-install-check:
	test -x $(GPU_VENV)/bin/python || $(PYTHON) -m venv $(GPU_VENV)
	$(GPU_VENV)/bin/python -m pip --disable-pip-version-check install -q -c constraints.txt mxnet-cu117 $(NVIDIA_CU11)
	cd $(GPU_VENV) && env -u LD_LIBRARY_PATH PYTHONPATH=$(CURDIR) $(GPU_VENV)/bin/python -m crunet.gpu install-check

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
