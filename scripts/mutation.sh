#!/usr/bin/env bash
# Mutation testing (mutmut) of the files where a silent bug changes results: methods/ (search,
# methods, classifier), model/adapter.py, features/extractor.py, features/corrections.py,
# experiment/cell.py, experiment/grid.py, experiment/shift.py, experiment/fingerprint.py, train/dino.py
# ([tool.mutmut] in pyproject.toml). Each mutant runs only the fast tests that reach the mutated
# function. Not in CI (hours on 2 cores for every file); run it before resolving an issue that
# touches those files, and give the score it prints.
#
#   bash scripts/mutation.sh                          every mutant of every configured file (the full scope)
#   bash scripts/mutation.sh model/adapter.py methods/   a narrower scope: files or folders under src/clipimo ...
#   bash scripts/mutation.sh 'clipimo.experiment.grid.*_run_cell*'   ... or mutmut name patterns (fnmatch)
#   SURVIVORS=1 bash scripts/mutation.sh [scope]      rerun only the scope's survivors (after adding tests)
#   FRESH=1 JOBS=2 bash scripts/mutation.sh ...       start over / worker processes (default 2)
#
# Results are kept in mutants/ (a later call reuses them, except for the mutants it names). Then
# `mutmut results` lists survivors and `mutmut show NAME` shows one's diff.
set -euo pipefail
cd "$(dirname "$0")/.."
MUTMUT=${MUTMUT:-.venv/bin/mutmut}
[[ -x "$MUTMUT" ]] || { echo "no $MUTMUT: .venv/bin/python -m pip install -e '.[dev,mutation]' (or set MUTMUT)" >&2; exit 2; }
MUTMUT_PY=$(head -1 "$MUTMUT" | sed 's/^#!//')
export HF_HUB_OFFLINE=1 MPLBACKEND=Agg OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
[[ "${FRESH:-0}" == 1 ]] && rm -rf mutants

# Scope arguments: "model/adapter.py" -> "clipimo.model.adapter.*", "methods/" -> "clipimo.methods.*"; patterns pass through.
pats=()
for arg in "$@"; do
    case "$arg" in
        *.py) mod=${arg%.py}; pats+=("clipimo.${mod//\//.}.*") ;;
        */) mod=${arg%/}; pats+=("clipimo.${mod//\//.}.*") ;;
        *) pats+=("$arg") ;;
    esac
done

# name -> status of every recorded mutant matching the scope (all when no scope), one per line.
statuses() {
    "$MUTMUT_PY" - "${pats[@]}" <<'PY'
import fnmatch, json, pathlib, sys
from mutmut.stats import status_by_exit_code
pats = sys.argv[1:] or ["*"]
for meta in sorted(pathlib.Path("mutants").rglob("*.meta")):
    for name, code in json.loads(meta.read_text()).get("exit_code_by_key", {}).items():
        if any(fnmatch.fnmatch(name, p) for p in pats):
            print(name, status_by_exit_code[code].replace(" ", "_"))
PY
}

run_pats=("${pats[@]}")
if [[ "${SURVIVORS:-0}" == 1 ]]; then
    [[ -d mutants ]] || { echo "SURVIVORS=1 needs an earlier run's mutants/" >&2; exit 2; }
    mapfile -t run_pats < <(statuses | awk '$2 == "survived" || $2 == "no_tests" || $2 == "suspicious" {print $1}')
    [[ ${#run_pats[@]} -gt 0 ]] || { echo "no survivors in scope" >&2; exit 0; }
fi
# mutmut reruns every mutant it is given by name or pattern, and only the unchecked ones otherwise.
"$MUTMUT" run --max-children "${JOBS:-2}" "${run_pats[@]}"

# Score: killed (incl. timed-out) over all mutants checked; "no tests" mutants count as survivors.
statuses | "$MUTMUT_PY" -c '
import collections, sys
status = dict(line.split() for line in sys.stdin if line.strip())
counts = collections.Counter(status.values())
killed = counts["killed"] + counts["timeout"]
checked = sum(n for s, n in counts.items() if s != "not_checked")
print(f"mutation score: {killed}/{checked} killed ({100 * killed / max(checked, 1):.1f}%); "
      + ", ".join(f"{s}: {n}" for s, n in sorted(counts.items())))
for name in sorted(n for n, s in status.items() if s in ("survived", "no_tests", "suspicious")):
    print(f"  {status[name]}: {name}")
'
