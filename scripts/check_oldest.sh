#!/usr/bin/env bash
# Install every dependency at the lower bound pyproject.toml gives it, then run the test suite.
#
#   PYTHON=python3.10 bash scripts/check_oldest.sh [EXTRAS] [-- PYTEST ARGS]   # EXTRAS: dev
#
# The ranges in pyproject.toml are what `pip install facesearch` users get; a lower bound is one
# this script has installed and run the suite on. Raise a bound when the script fails on it,
# never lower one without running the script. `name>=X` becomes `name==X` (extras such as
# psycopg[binary] kept); dependencies without a lower bound install as they resolve.
# Needs network access to the package index (old wheels, and torch's large CUDA build where no
# CPU build of the lower bound is available).
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${1:-dev}"
[ "${1:-}" = "--" ] && EXTRAS=dev
shift $(( $# > 0 ? 1 : 0 )) || true
[ "${1:-}" = "--" ] && shift
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 - "$EXTRAS" > "$work/oldest.txt" <<'PY'
import re, sys, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
reqs = list(project["dependencies"])
for extra in sys.argv[1].split(","):
    reqs += project["optional-dependencies"].get(extra, [])
seen = set()
for req in reqs:
    m = re.match(r"^\s*([A-Za-z0-9_.-]+(?:\[[^\]]+\])?)\s*(.*)$", req)
    name, spec = m.group(1), m.group(2)
    key = re.sub(r"\[.*", "", name).lower()
    if key in seen:
        continue
    seen.add(key)
    low = re.search(r">=\s*([^,;\s]+)", spec)
    print(f"{name}=={low.group(1)}" if low else name)
PY
echo "check_oldest: installing" $(cat "$work/oldest.txt") >&2
"${PYTHON:-python3}" -m venv "$work/venv"
. "$work/venv/bin/activate"
pip install -q -r "$work/oldest.txt"
pip install -q --no-deps -e .
pip check
python -m pytest -q -p no:cacheprovider "$@"
