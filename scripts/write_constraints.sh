#!/usr/bin/env bash
# Write the tested set of packages as a pip constraints file: every distribution installed in the
# venv the test suite runs in, `name==version`, sorted. Singularity.def installs with `-c` on it,
# so the image gets the versions the tests passed with (`make constraints` rewrites it).
#   scripts/write_constraints.sh [PYTHON] [OUT]    (defaults: .venv/bin/python, constraints.txt)
# Left out: the package itself (editable), pip/setuptools/wheel (the installer, not the tested
# set). Local version labels are dropped (torch 2.13.0+cpu -> torch==2.13.0, which matches the
# CUDA build on PyPI too), so one file serves a CPU-tested venv and a GPU image. Packages the venv
# lacks (extras it was not set up with) stay unpinned: pyproject.toml's ranges bound them.
set -euo pipefail
python="${1:-.venv/bin/python}"
out="${2:-constraints.txt}"
pins=$("$python" -m pip list --format=freeze --exclude-editable --disable-pip-version-check \
         --exclude pip --exclude setuptools --exclude wheel --exclude debate_lightning \
       | sed -E 's/\+[A-Za-z0-9.]+$//' | LC_ALL=C sort -f)
if grep -qv '^[A-Za-z0-9][A-Za-z0-9._-]*==[^=]*$' <<<"$pins"; then
  echo "write_constraints: unexpected lines from pip list:" >&2
  grep -v '^[A-Za-z0-9][A-Za-z0-9._-]*==[^=]*$' <<<"$pins" >&2
  exit 1
fi
version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
{
  echo "# The tested set: the packages of the venv the test suite passed in (Python $version)."
  echo "# Written by scripts/write_constraints.sh (make constraints); do not edit by hand."
  echo "# Used by Singularity.def: pip install -c constraints.txt ..."
  echo "$pins"
} >"$out.tmp"
mv "$out.tmp" "$out"
echo "write_constraints: $(wc -l <<<"$pins") pins in $out" >&2
