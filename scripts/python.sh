# Sourced by the scripts/*.sh entry points (after they set ROOT): PY is the Python to run, in this order:
# $PYTHON if set, else the project's .venv, else `python` (or `python3`) from PATH, e.g. a conda env or a
# Docker image's venv.
if [[ -n ${PYTHON:-} ]]; then
    PY=$PYTHON
elif [[ -x $ROOT/.venv/bin/python ]]; then
    PY=$ROOT/.venv/bin/python
elif command -v python >/dev/null 2>&1; then
    PY=$(command -v python)
elif command -v python3 >/dev/null 2>&1; then
    PY=$(command -v python3)
else
    echo "$(basename "$0"): no Python found; run scripts/setup_venv.sh, activate an environment, or set PYTHON=" >&2
    exit 2
fi
