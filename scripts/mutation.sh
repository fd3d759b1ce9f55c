#!/usr/bin/env bash
# Mutation testing (mutmut) of the files where a silent bug changes results: search.py, methods/,
# adapter.py, features.py, runner.py, shift.py, train/dino.py ([tool.mutmut] in pyproject.toml).
# Each mutant runs only the fast tests that reach the mutated function. Not in CI (hours on 2
# cores for every file); run it before resolving an issue that touches those files.
#
#   bash scripts/mutation.sh                               every configured file (resumes: results are cached in mutants/)
#   bash scripts/mutation.sh 'clipimo.search*' 'clipimo.methods*'   only mutants whose name matches
#   FRESH=1 JOBS=2 bash scripts/mutation.sh ...            start over / worker processes (default 2)
#
# Then: `.venv/bin/mutmut results` lists survivors, `.venv/bin/mutmut show NAME` shows one's diff.
set -euo pipefail
cd "$(dirname "$0")/.."
MUTMUT=${MUTMUT:-.venv/bin/mutmut}
[[ -x "$MUTMUT" ]] || { echo "no $MUTMUT: .venv/bin/python -m pip install -e '.[dev,mutation]'" >&2; exit 2; }
export HF_HUB_OFFLINE=1 MPLBACKEND=Agg OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
[[ "${FRESH:-0}" == 1 ]] && rm -rf mutants
"$MUTMUT" run --max-children "${JOBS:-2}" "$@"
# Score: killed (incl. timed-out) over all mutants checked; "no tests" mutants count as survivors.
MUTMUT_PY=$(head -1 "$(command -v "$MUTMUT")" | sed 's/^#!//')
"$MUTMUT_PY" - "$@" <<'PY'
import collections, fnmatch, json, pathlib, sys
from mutmut.stats import status_by_exit_code
pats = sys.argv[1:] or ["*"]
status = {}
for meta in pathlib.Path("mutants").rglob("*.meta"):
    for name, code in json.loads(meta.read_text()).get("exit_code_by_key", {}).items():
        if any(fnmatch.fnmatch(name, p) for p in pats):
            status[name] = status_by_exit_code[code]
counts = collections.Counter(status.values())
killed = counts["killed"] + counts["timeout"]
checked = sum(n for s, n in counts.items() if s != "not checked")
print(f"mutation score: {killed}/{checked} killed ({100 * killed / max(checked, 1):.1f}%); " + ", ".join(f"{s}: {n}" for s, n in sorted(counts.items())))
for name in sorted(n for n, s in status.items() if s in ("survived", "no tests", "suspicious")):
    print(f"  {status[name]}: {name}")
PY
