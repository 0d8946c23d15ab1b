#!/usr/bin/env bash
# Fails when iaf_repro/ is not exactly what nbdev_export makes of nbs/, or when a notebook is not
# clean (nbdev_clean would change it). Works on a scratch copy, so the working tree is never touched.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
cp -r "$root/settings.ini" "$root/nbs" "$scratch/"
mkdir "$scratch/iaf_repro"
# __init__.py is the one hand-written file (package-root re-exports); nbdev rewrites only its version line.
cp "$root/iaf_repro/__init__.py" "$scratch/iaf_repro/"
# reference/ is package data (the published numbers the tables print), not generated from a notebook.
cp -r "$root/iaf_repro/reference" "$scratch/iaf_repro/"
cd "$scratch"
nbdev_export
nbdev_clean
status=0
if ! diff -r -q -x __pycache__ "$scratch/iaf_repro" "$root/iaf_repro"; then
  echo "iaf_repro/ is out of date with nbs/: run 'make export' and commit both." >&2
  status=1
fi
if ! diff -r -q -x .ipynb_checkpoints "$scratch/nbs" "$root/nbs"; then
  echo "Some notebooks are not clean: run 'make export' (it runs nbdev_clean) and commit them." >&2
  status=1
fi
exit $status
