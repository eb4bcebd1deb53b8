#!/usr/bin/env bash
# Does tapengine's C-level API install? Builds the sdist and, from it, the wheel; installs each in
# a fresh virtualenv (no checkout on the path: the sdist builds its extensions from .pyx there);
# builds this directory's extension against the installed package and moves packets with it, builds
# the C stage example (examples/stages/acl) against the wheel and runs it inside a forwarder, and
# runs 'tapengine bench' from the installed package.
#
# usage: check-install.sh BUILD_PYTHON
#   BUILD_PYTHON runs `python -m build --no-isolation`: it needs build, setuptools, Cython, numpy.
set -euo pipefail
build_python=${1:?usage: $0 BUILD_PYTHON}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/tapengine-capi.XXXXXX")
trap 'rm -rf "$work"' EXIT
build_deps=("setuptools>=77" "Cython>=3.0.10,<4" "numpy>=1.26")
pip=(-m pip --disable-pip-version-check -q)

step() { printf '== %s (%ss)\n' "$1" "$SECONDS"; }

step "sdist, and the wheel built from it"
"$build_python" -m build --no-isolation --outdir "$work/dist" "$root" >"$work/build.log" 2>&1 \
    || { cat "$work/build.log"; exit 1; }
sdist=$(echo "$work"/dist/tapengine-*.tar.gz)
wheel=$(echo "$work"/dist/tapengine-*.whl)
missing=$("$build_python" - "$wheel" <<'PY'
import sys, zipfile
names = set(zipfile.ZipFile(sys.argv[1]).namelist())
api = ["_ring.pxd", "_batchio.pxd", "_uring.pxd", "_forward.pxd", "_pktgen.pxd", "_gso.pxd",
       "_stage.pxd",
       "syscall.pxd", "netorder.pxd", "__init__.pxd", "includes/__init__.pxd",
       "includes/system.pxd", "includes/consts.pxd", "includes/uring.pxd", "includes/uring.h"]
modules = ["ring", "batchio", "uring", "forward", "pktgen", "gso", "stage"]
missing = [name for name in api if "tapengine/" + name not in names]
missing += [f"_{module}.*.so" for module in modules
            if not any(n.startswith(f"tapengine/_{module}.") and n.endswith(".so") for n in names)]
print(" ".join(missing))
PY
)
[ -z "$missing" ] || { echo "the wheel lacks: $missing"; exit 1; }

for kind in wheel sdist; do
    step "a fresh virtualenv with the $kind"
    venv="$work/venv-$kind"
    "$build_python" -m venv "$venv"  # the interpreter the wheel was built for
    "$venv/bin/python" "${pip[@]}" install "${build_deps[@]}"
    if [ "$kind" = wheel ]; then
        "$venv/bin/python" "${pip[@]}" install "$wheel"
    else
        "$venv/bin/python" "${pip[@]}" install --no-build-isolation "$sdist"
    fi
    step "the example extension against the $kind"
    cp -r "$here" "$work/example-$kind"
    "$venv/bin/python" "${pip[@]}" install --no-build-isolation --no-deps "$work/example-$kind"
    (cd "$work" && "$venv/bin/python" -I "$work/example-$kind/relay_check.py")
    if [ "$kind" = wheel ]; then
        step "the C stage example (examples/stages/acl) against the wheel"
        cp -r "$root/examples/stages/acl" "$work/stage-$kind"
        "$venv/bin/python" "${pip[@]}" install --no-build-isolation --no-deps "$work/stage-$kind"
        (cd "$work" && "$venv/bin/python" -I "$work/stage-$kind/acl_check.py" --installed)
    fi
    # The benchmark harness and its naive baseline come from the installed package, too.
    if [ "$kind" = wheel ]; then
        bench=(--quick)
    else
        bench=(--quick --rounds 1 --sizes 64 --scenarios engine,naive,tcp-naive)
    fi
    step "tapengine bench ${bench[*]} from the $kind"
    (cd "$work" && "$venv/bin/tapengine" bench "${bench[@]}" --quiet --json >"$work/bench-$kind.json")
    "$venv/bin/python" -c 'import json, sys; runs = json.load(open(sys.argv[1]))["runs"]; assert runs, "no runs"; print(len(runs), "runs")' "$work/bench-$kind.json"
done
step "done"
