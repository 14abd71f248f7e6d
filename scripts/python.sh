# Sourced by the scripts here, from the repository root: sets PY to the Python that has zs-ray installed.
# $PYTHON when set; else ./.venv/bin/python (what scripts/install.sh creates), active or not; else python3 /
# python on PATH (an activated or system-wide install).
if [ -n "${PYTHON:-}" ]; then
  PY="$PYTHON"
elif [ -x .venv/bin/python ]; then
  PY=.venv/bin/python
else
  PY="$(command -v python3 || command -v python || true)"
fi
if [ -z "$PY" ]; then
  echo "$0: no Python found: run 'bash scripts/install.sh' (creates ./.venv) or set PYTHON=/path/to/python" >&2
  exit 127
fi
