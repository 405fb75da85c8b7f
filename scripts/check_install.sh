#!/usr/bin/env bash
# Non-editable install check (CI runs it): builds jdo's wheel from the checkout's files, installs
# it with its dependencies into a fresh venv, and from a directory outside the checkout runs
# `jdo-train debug=smoke` and `jdo-launch --help`; checks the wheel holds jdo/conf/**.yaml and no
# top-level `experiments` package; without the rl extra, `task=cartpole` must fail in one line.
# EXTRAS='[notebooks]' installs that extra and runs every notebook with `jupyter nbconvert`.
# Prints its own timings.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
EXTRAS=${EXTRAS:-}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
start=$SECONDS
say() { echo "check_install: $* ($((SECONDS - start)) s)"; }

# Build from a copy of the checkout's own files (tracked, or untracked and not ignored), so no
# stale build/ or egg-info of an earlier build can slip into the wheel.
mkdir -p "$WORK/src"
(cd "$ROOT" && git ls-files -z --cached --others --exclude-standard | xargs -0 tar -cf - 2>/dev/null) |
    tar -C "$WORK/src" -xf -
"$PYTHON" -m venv "$WORK/venv"
VPY=$WORK/venv/bin/python
pip() { "$VPY" -m pip "$@" >>"$WORK/pip.log" 2>&1 || { cat "$WORK/pip.log"; exit 1; }; }
pip install --upgrade pip
pip wheel --quiet --no-deps -w "$WORK/dist" "$WORK/src"
say "wheel built"
WHEEL=$(ls "$WORK"/dist/jdo-*.whl)
"$VPY" - "$WHEEL" "$ROOT/jdo/conf" <<'EOF'
import pathlib, sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
conf = pathlib.Path(sys.argv[2])
want = {f"jdo/conf/{p.relative_to(conf)}" for p in conf.rglob("*.yaml")}
missing = sorted(want - set(names))
assert not missing, f"wheel lacks configs: {missing}"
tops = sorted({n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")})
assert tops == ["jdo"], f"wheel installs top-level {tops}, expected only jdo"
print(f"check_install: wheel holds {len(want)} configs and only the jdo package")
EOF
pip install --quiet "${WHEEL}${EXTRAS}"
say "installed ($(du -sm "$WORK/venv" | cut -f1) MiB venv)"

cd "$WORK"  # outside the checkout: nothing can come from its files
"$VPY" -c "import importlib.util as u, jdo; assert u.find_spec('experiments') is None; \
assert jdo.__file__.startswith('$WORK/venv/'), jdo.__file__"
grep -q "Config groups" <<<"$("$WORK/venv/bin/jdo-train" --help)"
grep -q "jdo-launch" <<<"$("$WORK/venv/bin/jdo-launch" --help)"
env -u XLA_FLAGS "$WORK/venv/bin/jdo-train" debug=smoke checkpoint=none hydra.run.dir="$WORK/run"
test -s "$WORK/run/summary.json" && test -s "$WORK/run/metrics.jsonl"
# nested config groups (cluster/stragglers) ship in the wheel, and a simulated cluster runs
env -u XLA_FLAGS "$WORK/venv/bin/jdo-train" debug=smoke checkpoint=none cluster=cloud \
    cluster/stragglers=shifted_exponential hydra.run.dir="$WORK/cluster"
grep -q '"time/total"' "$WORK/cluster/summary.json"
say "jdo-train and jdo-launch ran from outside the checkout"
if [[ $EXTRAS != *rl* && $EXTRAS != *notebooks* && $EXTRAS != *dev* ]]; then
    # without the rl extra, an RL task fails in one line naming it
    status=0
    err=$("$WORK/venv/bin/jdo-train" task=cartpole debug=smoke hydra.run.dir="$WORK/rl" 2>&1 >/dev/null) ||
        status=$?
    [[ $status == 2 && $err == *"pip install 'jdo[rl]'"* && $err != *Traceback* ]] ||
        { echo "task=cartpole without jdo[rl]: status $status: $err"; exit 1; }
fi
if [[ $EXTRAS == *notebooks* ]]; then  # the notebooks extra runs them with jupyter
    for nb in "$ROOT"/notebooks/*.ipynb; do
        env -u XLA_FLAGS MPLBACKEND=Agg "$WORK/venv/bin/jupyter" nbconvert --to notebook --execute \
            --output-dir "$WORK/nb" "$nb" 2>>"$WORK/nbconvert.log" ||
            { cat "$WORK/nbconvert.log"; exit 1; }
    done
    say "jupyter nbconvert executed every notebook"
fi
