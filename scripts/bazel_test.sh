#!/usr/bin/env bash
# Run the test suite under Bazel, offline:  scripts/bazel_test.sh [TARGET ...] [BAZEL TEST FLAG ...]
#
#   scripts/bazel_test.sh                                # bazel test //...
#   scripts/bazel_test.sh //:test_config //:test_hf      # some targets
#   scripts/bazel_test.sh --test_output=all //:test_hf   # extra `bazel test` flags pass through
#
# Python: the tests run with the python3 of a virtualenv that already has the project's dependencies
# (`pip install -e '.[test]'`); Bazel installs no Python packages. The first that exists of
#   $BAZEL_TEST_VENV, the active $VIRTUAL_ENV, <repo>/.venv
# is put first on PATH, where Bazel's Python toolchain finds `python3`.
#
# Bazel: Debian's bazel-bootstrap (Bazel 4.2.3). If `bazel` is not on PATH, this script runs
# `apt-get update && apt-get install -y bazel-bootstrap` (needs root and the Debian mirror; the only
# network access it makes). Bazel itself downloads nothing: WORKSPACE stubs the repositories it would
# fetch (third_party/bazel_stubs/).
#
# Bazel's output lives in $BAZEL_OUTPUT_USER_ROOT (default ${TMPDIR:-/tmp}/bazel-kinetics_jax-<uid>),
# outside the repo; the bazel-* convenience symlinks in the repo root are git-ignored.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# ---- the virtualenv -----------------------------------------------------------------------------
VENV="${BAZEL_TEST_VENV:-${VIRTUAL_ENV:-}}"
if [[ -z "$VENV" && -d "$ROOT/.venv" ]]; then
  VENV="$ROOT/.venv"
fi
if [[ -z "$VENV" ]]; then
  echo "bazel_test.sh: no virtualenv: set BAZEL_TEST_VENV, activate one, or create $ROOT/.venv" >&2
  exit 2
fi
VENV="$(cd "$VENV" && pwd)"
if [[ ! -x "$VENV/bin/python3" ]]; then
  echo "bazel_test.sh: $VENV/bin/python3 not found (BAZEL_TEST_VENV / VIRTUAL_ENV must be a virtualenv)" >&2
  exit 2
fi
if ! "$VENV/bin/python3" -c "import pytest" 2>/dev/null; then
  echo "bazel_test.sh: pytest is not installed in $VENV (pip install -e '.[test]')" >&2
  exit 2
fi
export PATH="$VENV/bin:$PATH"
export VIRTUAL_ENV="$VENV"
export HOME="${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}"

# ---- Bazel --------------------------------------------------------------------------------------
if ! command -v bazel >/dev/null 2>&1; then
  echo "bazel_test.sh: bazel not found; installing Debian's bazel-bootstrap" >&2
  SUDO=""
  if [[ "$(id -u)" -ne 0 ]]; then SUDO="sudo"; fi
  $SUDO apt-get update
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y bazel-bootstrap
fi

OUTPUT_USER_ROOT="${BAZEL_OUTPUT_USER_ROOT:-${TMPDIR:-/tmp}/bazel-kinetics_jax-$(id -u)}"

# Default target //... unless a target is given (an argument not starting with '-').
TARGETS=("//...")
for arg in "$@"; do
  if [[ "$arg" != -* ]]; then TARGETS=(); break; fi
done

cd "$ROOT"
echo "bazel_test.sh: python3 = $(command -v python3) ($(python3 -c 'import sys; print(sys.version.split()[0])'))" >&2
# The PATH / HOME / pass-through variables go to tests as well as to build actions: the Python
# toolchain resolves `python3` on PATH when a test starts. Variables unset here stay unset in tests.
exec bazel --output_user_root="$OUTPUT_USER_ROOT" test \
  --action_env=PATH \
  --test_env=PATH \
  --test_env=HOME \
  --test_env=VIRTUAL_ENV \
  --test_env=JAX_PLATFORMS \
  --test_env=XLA_FLAGS \
  --test_env=CUDA_VISIBLE_DEVICES \
  --test_env=HF_HOME \
  --test_env=HF_HUB_OFFLINE \
  --test_env=TRANSFORMERS_OFFLINE \
  --host_force_python=PY3 \
  --test_output=errors \
  "$@" ${TARGETS[@]+"${TARGETS[@]}"}
