# genreclf: `make demo` sets everything up and runs the pipeline on a generated corpus;
# `make test` runs the test suite (what CI runs). Both create .venv on first use.
# GPU=1 (a GPU training node) installs TensorFlow's CUDA build instead of the CPU wheel, in .venv-gpu.
PYTHON  ?= python3
GPU     ?= 0
RUNTIME := $(if $(filter 1,$(GPU)),requirements-gpu.txt,requirements.txt)
VENV    ?= $(if $(filter 1,$(GPU)),.venv-gpu,.venv)
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed-$(shell cat $(RUNTIME) requirements-base.txt requirements-dev.txt requirements-mlflow.txt setup.py genreclf/ml/pretrained.py spark-submit.sh | cksum | cut -d' ' -f1)
DEMO    := demo-output
# The recommended preset (README, docs/quality.md): a genre head on two pretrained musicnn backbones.
RECOMMENDED := conf/musicnn-fusion.toml

CORPUS  ?= ../shared/corpus-train
CONF    ?= conf/genreclf.toml
REPEAT  ?= 1
CV_OUT  ?= cv-output/$(basename $(notdir $(CONF)))$(if $(filter-out 1,$(REPEAT)),-x$(REPEAT))

.PHONY: install install-gpu demo test bench bench-scale crossval pack clean help
help:
	@echo "make demo   - set up .venv and run the pipeline end to end on a generated corpus (local mode)"
	@echo "make test   - run the test suite"
	@echo "make bench  - run the benchmarks"
	@echo "make bench-scale - catalogues of 10 k to 1 M rows, a killed and resumed run, 1 M tracks extrapolated (~30 min)"
	@echo "make crossval [CONF=$(RECOMMENDED)] [REPEAT=5] - 5-fold artist-grouped cross-validation on $(CORPUS), REPEAT times (~30-45 min each)"
	@echo "make pack   - build/genreclf-env.tar.gz: the runtime environment for executors (--archives ...#env)"
	@echo "make install-gpu - a GPU training node's environment (.venv-gpu; then make test GPU=1 ...)"
	@echo "make clean  - remove build outputs and demo output (keeps .venv)"

install: $(STAMP)
$(STAMP):
	@command -v java >/dev/null || { echo "Spark needs Java 17+: e.g. apt-get install -y openjdk-17-jre-headless" >&2; exit 1; }
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -r $(RUNTIME) -r requirements-dev.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	$(PY) -m pip check
	$(PY) -m genreclf.ml.pretrained install  # musicnn's weights from its wheel, checked (not the package)
	$(PY) -m genreclf.demo corpus --out build/cds/corpus --tracks-per-style 1 --duration 4 >/dev/null
	GENRECLF_SPARK_CDS=dump ./spark-submit.sh --master 'local[1]' featurize --input build/cds/corpus \
	    --output build/cds/features --overwrite >/dev/null 2>&1 \
	    || echo "note: no class dump for the driver JVM: jobs start ~2.5 s slower (see spark-submit.sh)"
	rm -rf build/cds
	@rm -f $(VENV)/.installed-*
	@touch $@

install-gpu:
	$(MAKE) install GPU=1

# The runtime environment packed for executors (venv-pack): the pinned requirements and genreclf,
# without pyspark (every Spark node runs its own) or TensorFlow's C++ headers. Relocatable except
# for the interpreter: nodes need this Python at the same path (docs/cluster.md). ~600 MB, ~70 s.
PACK     := build/genreclf-env$(if $(filter 1,$(GPU)),-gpu).tar.gz
PACK_ENV := build/pack-env
pack: $(PACK)
$(PACK): $(STAMP) $(shell git ls-files genreclf 2>/dev/null)
	rm -rf $(PACK_ENV)
	$(PY) -m venv $(PACK_ENV)  # on the interpreter .venv is made from
	$(PACK_ENV)/bin/pip install -q --disable-pip-version-check -r $(RUNTIME)
	$(PACK_ENV)/bin/pip install -q --disable-pip-version-check --no-deps .
	rm -rf build/lib build/bdist.*
	$(VENV)/bin/venv-pack -q -p $(PACK_ENV) -o $@.partial --format tar.gz --compress-level 1 --force \
	    --exclude 'lib/python3.*/site-packages/pyspark/*' --exclude 'lib/python3.*/site-packages/tensorflow/include/*'
	chmod 644 $@.partial && mv $@.partial $@
	rm -rf $(PACK_ENV)

demo: install
	$(PY) -m genreclf.demo corpus --out $(DEMO)/corpus
	./spark-submit.sh featurize --input $(DEMO)/corpus --labels $(DEMO)/corpus/labels.csv \
	    --output $(DEMO)/features --overwrite
	./spark-submit.sh train --features $(DEMO)/features --model $(DEMO)/model --epochs 6 --batch-size 32 --overwrite
	./spark-submit.sh score --model $(DEMO)/model --input $(DEMO)/corpus --output $(DEMO)/scores --csv --overwrite
	./spark-submit.sh evaluate --model $(DEMO)/model --features $(DEMO)/features
# The recommended model: a genre head on pretrained musicnn backbones, same corpus.
	./spark-submit.sh featurize --input $(DEMO)/corpus --labels $(DEMO)/corpus/labels.csv \
	    --output $(DEMO)/features-musicnn --conf $(RECOMMENDED) --overwrite
	./spark-submit.sh train --features $(DEMO)/features-musicnn --model $(DEMO)/model-musicnn --conf $(RECOMMENDED) \
	    --overwrite
	./spark-submit.sh evaluate --model $(DEMO)/model-musicnn --features $(DEMO)/features-musicnn --conf $(RECOMMENDED)
	@for m in model model-musicnn; do $(PY) -c "import json, sys; t = json.load(open(sys.argv[1]))['tracks']; \
	    print(f'demo {sys.argv[2]}: validation track-level accuracy {t[\"accuracy\"]:.3f} on {t[\"n\"]} tracks, ' \
	          f'log loss {t[\"log_loss\"]:.4f}')" $(DEMO)/$$m/evaluation/metrics.json \
	    "$$([ $$m = model ] && echo 'reference CNN (from scratch)' || echo 'musicnn head (recommended)')"; done
	@echo "demo outputs:"
	@echo "  $(DEMO)/features/windows   petastorm dataset of STFT windows"
	@echo "  $(DEMO)/features/tracks    one status row per input file"
	@echo "  $(DEMO)/model              model bundle (model.keras, bundle.json, metrics, curves, confusion matrix)"
	@echo "  $(DEMO)/model-musicnn      the recommended model: a genre head on pretrained musicnn backbones ($(RECOMMENDED))"
	@echo "  $(DEMO)/scores/current.json  names the committed run directory $(DEMO)/scores/run-*/, holding:"
	@echo "      scores/         one row per file: genre, confidence, probabilities"
	@echo "      submission.csv  crowdAI layout: file_id + one column per genre"

# Three runs so that only one Spark application is alive at a time: the suite's local session,
# the crash tests (spark-submit runs killed with SIGKILL), then the standalone-cluster tests
# (their own master, workers and spark-submit applications). The executors' packed environment
# (~90 s of CPU: pip, venv-pack) is built beside the first group, and the pure tests (no Spark, no
# server; ~50 s of CPU) run beside the cluster group: measured per test (2-core AMD EPYC Zen 4,
# 2026-12-06), the groups keep 1.48, 1.60 and 1.38 of the 2 cores busy, so the cluster group has the
# most idle CPU (pure beside the crash tests added ~40 s to them).
test: install
	@mkdir -p build; echo "make pack beside the tests (only the cluster group needs it): build/pack.log"; \
	  setsid nice -n 10 $(MAKE) --no-print-directory pack > build/pack.log 2>&1 & echo $$! > build/pack.pid
	$(PY) -m pytest -m "not cluster and not faults and not pure" || { kill -- -$$(cat build/pack.pid) 2>/dev/null; exit 1; }
	$(PY) -m pytest -m faults || { kill -- -$$(cat build/pack.pid) 2>/dev/null; exit 1; }
	@pid=$$(cat build/pack.pid); rm -f build/pack.pid; while kill -0 $$pid 2>/dev/null; do sleep 1; done; \
	  [ -f $(PACK) ] || { tail -n 20 build/pack.log; echo "make pack failed (build/pack.log)" >&2; exit 1; }
	@$(PY) -m pytest -m pure -p no:cacheprovider --basetemp build/pytest-pure > build/pure-tests.log 2>&1 & pure=$$!; \
	  echo "$(PY) -m pytest -m cluster  (and -m pure beside it: build/pure-tests.log)"; \
	  $(PY) -m pytest -m cluster; cluster=$$?; wait $$pure; pure=$$?; \
	  echo "--- pytest -m pure:"; tail -n 25 build/pure-tests.log; [ $$cluster -eq 0 ] && [ $$pure -eq 0 ]

# Featurize the labelled corpus with CONF's recipe, then cross-validate CONF's training (docs/quality.md),
# REPEAT times with reshuffled folds (the same folds for every CONF). A rerun re-featurizes (~15 s) and
# reuses the fold bundles trained with the same recipe and settings.
crossval: install
	./spark-submit.sh featurize --input $(CORPUS)/clips --labels $(CORPUS)/MANIFEST.csv \
	    --output $(CV_OUT)/features --conf $(CONF) --overwrite
	./spark-submit.sh evaluate --cv 5 --repeat $(REPEAT) --features $(CV_OUT)/features --output $(CV_OUT) --conf $(CONF)

bench: install
	$(PY) -m benchmarks.run --out bench-output
	$(PY) -m benchmarks.scoring --out bench-output
	$(PY) -m benchmarks.stages --out bench-output
	$(PY) -m benchmarks.object_store --out bench-output

# Scale (docs/performance.md, "Scale"): its own target, ~30 min on 2 cores.
bench-scale: install
	$(PY) -m benchmarks.scale --out bench-output/scale

clean:
	rm -rf build $(DEMO) bench-output cv-output .pytest_cache
