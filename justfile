# PainAR Gateway. `just run` starts it on embedded defaults; `just test` runs the suite.
# Each recipe creates .venv with Python 3.11+ and installs what it needs on first use.

set shell := ["bash", "-euo", "pipefail", "-c"]

python := env_var_or_default("PYTHON", "python3")
bin := ".venv/bin"

# List the recipes
default:
    @just --list

# Create .venv if missing; (re)install at requirements.lock's versions when it changed
install:
    #!/usr/bin/env bash
    set -euo pipefail
    if [ ! -x {{bin}}/python ]; then
        if ! {{python}} -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "just: Python 3.11 or newer is needed; point PYTHON at one (PYTHON=python3.12 just run)" >&2
            exit 1
        fi
        {{python}} -m venv .venv
    fi
    if [ ! -f .venv/.installed ] || [ pyproject.toml -nt .venv/.installed ] \
        || [ requirements.lock -nt .venv/.installed ]; then
        {{bin}}/python -m pip install --quiet --disable-pip-version-check --upgrade pip
        {{bin}}/python -m pip install --quiet --disable-pip-version-check \
            -c requirements.lock -e '.[embedded,local-asr,dev]'
        touch .venv/.installed
    fi

# The lock: every platform and Python 3.11+, newest versions pyproject.toml allows.
# Run the suite on it before committing it.
# Re-resolve requirements.lock from pyproject.toml and install it
lock: install
    {{bin}}/python -m pip install --quiet --disable-pip-version-check uv
    {{bin}}/uv pip compile pyproject.toml --all-extras --universal --python-version 3.11 \
        --upgrade -o requirements.lock
    {{bin}}/python -m pip install --quiet --disable-pip-version-check \
        -c requirements.lock -e '.[embedded,local-asr,dev]'
    touch .venv/.installed

# Serve on embedded defaults (a development run: DEBUG defaults to true)
run *args: install
    DEBUG="${DEBUG:-true}" exec {{bin}}/painar-gateway serve {{args}}

# Run the test suite (arguments go to pytest)
test *args: install test-tools
    {{bin}}/pytest -n 2 {{args}}

# What the suite needs besides Python, installed when missing: redis-server and redis-cli
# (a Redis Cluster's suites), espeak-ng, sox, promtool, Node,
# Chromium (Debian's: the console's browser tests; Playwright downloads no browser)
test-tools:
    #!/usr/bin/env bash
    set -euo pipefail
    missing=()
    command -v redis-server >/dev/null || missing+=(redis-server)
    command -v redis-cli >/dev/null || missing+=(redis-tools)
    command -v espeak-ng >/dev/null || missing+=(espeak-ng)
    command -v sox >/dev/null || missing+=(sox)
    command -v promtool >/dev/null || missing+=(prometheus)
    command -v npm >/dev/null || missing+=(nodejs npm)
    command -v chromium >/dev/null || missing+=(chromium)
    if [ ${#missing[@]} != 0 ]; then
        if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
            # The prometheus package brings promtool; its server is not started here.
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null \
                || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; }
        else
            echo "just: the suite needs ${missing[*]} (apt-get install ${missing[*]})" >&2
            exit 1
        fi
    fi
    # The official AsyncAPI parser and the TypeScript client's build and test packages, at
    # the versions in their lock files.
    for package in tests/asyncapi clients/typescript; do
        if [ ! -d "$package/node_modules" ] || [ "$package/package-lock.json" -nt "$package/node_modules" ]; then
            npm ci --prefix "$package" --no-audit --no-fund --loglevel=error
            touch "$package/node_modules"
        fi
    done

# ruff check, ruff format --check, mypy, lint-imports (the layering)
lint: install
    {{bin}}/ruff check .
    {{bin}}/ruff format --check .
    {{bin}}/mypy
    {{bin}}/lint-imports

# Format the code and apply safe lint fixes
fmt: install
    {{bin}}/ruff format .
    {{bin}}/ruff check --fix .

# A token for the gateway `just run` serves (same SECRET_KEY; e.g. --role patient --sub UUID)
token *args: install
    @DEBUG="${DEBUG:-true}" {{bin}}/painar-gateway token {{args}}

# Apply pending database migrations (embedded database unless DATABASE_URL is set)
migrate: install
    DEBUG="${DEBUG:-true}" {{bin}}/painar-gateway migrate

# The fault suite's full form: 50 patients while processes die, Redis and PostgreSQL
# restart, a partition and slow readers (bench/faults.py; the suite runs a short form)
faults: install
    {{bin}}/python -m bench.faults

# Rebuild the TypeScript client and copy it into the console (it is served as committed)
console-client:
    npm ci --prefix clients/typescript --no-audit --no-fund --loglevel=error
    npm run --prefix clients/typescript build
    cp clients/typescript/dist/src/{audio,client,index,replica}.js gateway/console/static/client/

# The console's screenshots in docs/, taken by its browser tests
screenshots: install test-tools
    mkdir -p docs/console
    PAINAR_SCREENSHOTS=docs/console {{bin}}/pytest -q tests/test_console.py -k side_by_side

# Draw the benchmarks' latest figures (docs/benchmarks/data/*.json) as PNG charts
plots: install
    {{bin}}/python -m pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[plots]'
    {{bin}}/python -m bench.plot

# Run the benchmarks in bench/ (one by name: just bench changes)
bench name="": install
    #!/usr/bin/env bash
    set -euo pipefail
    for script in bench/*.py; do
        module=$(basename "$script" .py)
        case "$module" in _*|plot|floor) continue ;; esac
        if [ -z "{{name}}" ] || [ "$module" = "{{name}}" ]; then
            {{bin}}/python -m "bench.$module"
        fi
    done
