# Sourced by the bench shell scripts, from the repository root: sets PY to the interpreter to use:
# $PYTHON if set, else the project venv .venv/, else an active venv, else python.
if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
elif [ -n "${VIRTUAL_ENV:-}" ] && [ -x "$VIRTUAL_ENV/bin/python" ]; then PY="$VIRTUAL_ENV/bin/python"
else PY=python; fi
