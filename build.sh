#!/usr/bin/env bash
# anoscope build driver. Each command first installs what it needs and is missing (one line a step).
#
#   ./build.sh serve [--port N]  set up, build, then serve www/dist on http://127.0.0.1:N/ (default 8080)
#   ./build.sh test              set up (plus Chromium, lavapipe), then fmt, clippy, cargo test, both
#                                wasm builds, the wasm-vs-native parity test, the page in headless Chromium
#   ./build.sh [build]           set up, build the wasm crate and assemble the static site in www/dist/
#   ./build.sh package           build, then `npm pack` the detector as the npm package `anoscope`
#                                (packages/anoscope/dist/anoscope-VERSION.tgz)
#   ./build.sh setup [serve|test]  only install what that command needs (default: test)
#   ./build.sh weights [...]     download + verify the checkpoints in weights/manifest.json
#   ./build.sh help
#
# Environment: CARGO_TARGET_DIR is honoured. ANOSCOPE_NO_INSTALL=1 installs nothing (names what is
# missing). ANOSCOPE_WASM_OPT=0 skips wasm-opt; ANOSCOPE_THREADS=0 skips the threaded build.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"
ROOT="$(pwd)"

WASM_TARGET=wasm32-unknown-unknown
WASM_BINDGEN_VERSION=0.2.130
# Flags for the wasm target only (target-scoped, so host builds, build scripts and
# proc-macros keep their cache). Keep them identical for `build` and `test`.
WASM_RUSTFLAGS="-C target-feature=+simd128"
# Features rustc enables for wasm32-unknown-unknown by default, plus SIMD; wasm-opt
# must be allowed to keep using them.
WASM_OPT_FEATURES=(--enable-simd --enable-bulk-memory --enable-nontrapping-float-to-int
    --enable-sign-ext --enable-mutable-globals --enable-reference-types --enable-multivalue)
GZIP_GOAL_BYTES=4000000
# The threaded build (wasm atomics + a rayon pool of Web Workers sharing the module's memory, for
# cross-origin isolated pages): a nightly toolchain with rust-src (std is rebuilt with atomics).
# Where that toolchain is missing the site ships the single-threaded build alone.
THREADS_TOOLCHAIN="${ANOSCOPE_THREADS_TOOLCHAIN:-nightly}"
WASM_THREADS_RUSTFLAGS="-C target-feature=+simd128,+atomics,+bulk-memory,+mutable-globals -C link-arg=--max-memory=4294967296"
# The relaxed-SIMD variants (www/dist/pkg-relaxed, pkg-threads-relaxed): the same builds with the
# crate's `relaxed-simd` feature (f32x4.relaxed_madd in its wasm GEMM kernel,
# crate/src/model/wasm_gemm.rs, which enables the target feature on its own functions: the
# dependencies are the SIMD128 builds' own, cached). The worker loads them where
# WebAssembly.validate accepts a relaxed-SIMD probe (Chrome ≥ 114), else the SIMD128 builds.
# ANOSCOPE_RELAXED=0 skips them.
# Linker arguments for the final module only: shared, imported memory and the TLS exports
# wasm-bindgen's thread support needs (passed through `cargo rustc`, so dependencies keep their cache).
WASM_THREADS_LINK_ARGS=(-C link-arg=--shared-memory -C link-arg=--import-memory
    -C link-arg=--export=__wasm_init_tls -C link-arg=--export=__tls_size
    -C link-arg=--export=__tls_align -C link-arg=--export=__tls_base)

TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
DIST="$ROOT/www/dist"
PKG="$DIST/pkg"
PARITY_DIR="$TARGET_DIR/wasm-parity"
LAYOUTS=(hf_tiny openclip_tiny)
PROMPTS=("a photo of a flawless bottle." "a photo of a damaged bottle.")

log() { printf '\n==> %s\n' "$*"; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

usage() {
    sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
}

# ---------------------------------------------------------------------------
# set-up: what building, serving and testing need, installed when missing
# ---------------------------------------------------------------------------
# Every step is idempotent and prints one line: what it installs, why, and how long it took (or
# that it is already there). An installer's own output goes to $SETUP_LOGS/<step>.log, whose last
# lines are shown when it fails. A failed step leaves nothing half-installed (rustup, cargo install
# and apt-get install atomically; a failed npm ci removes node_modules) and names the command
# that installs the piece by hand. ANOSCOPE_NO_INSTALL=1 installs nothing: each missing piece is
# named with that command instead.

SETUP_LOGS="$TARGET_DIR/setup-logs"
APT_UPDATED=0

# The usual cargo bin dir, where `cargo install` puts wasm-bindgen-cli.
cargo_bin_dir() { printf '%s/bin' "${CARGO_HOME:-$HOME/.cargo}"; }

setup_ok() { printf 'setup: ok         %s\n' "$*"; }
setup_skip() { printf 'setup: skipped    %s\n' "$*"; }

# Why an installer failed, in one line: its first error line and its last words (skipping backtrace
# frames), as in "error: download of config.json failed … Could not resolve host: index.crates.io".
log_reason() {
    local first last
    first=$(grep -m 1 -E '^(error|E|npm (error|ERR!))[: ]' "$1" | cut -c1-160 || true)
    last=$(sed '/^Stack backtrace:/,$d' "$1" | grep -v '^[[:space:]]*$' | tail -n 1 |
        sed -E 's/^[[:space:]]*([0-9]+: )?//' | cut -c1-160 || true)
    if [[ -z "$first" || "$first" == "$last" ]]; then
        printf '%s' "${last:-no output}"
    else
        printf '%s … %s' "$first" "$last"
    fi
}

# setup_install NAME WHAT WHY HOW FUNCTION [ARGS…]: runs FUNCTION ARGS with its output in
# $SETUP_LOGS/NAME.log. On success prints one line with the time taken; on failure prints why,
# the log's last lines and HOW (the command that installs it by hand), and returns 1.
setup_install() {
    local name="$1" what="$2" why="$3" how="$4" start log
    shift 4
    log="$SETUP_LOGS/$name.log"
    if [[ "${ANOSCOPE_NO_INSTALL:-0}" == 1 ]]; then
        printf 'setup: missing    %s (%s); install it with: %s\n' "$what" "$why" "$how" >&2
        return 1
    fi
    mkdir -p "$SETUP_LOGS"
    printf 'setup: installing %s (%s) ... ' "$what" "$why"
    start=$SECONDS
    if ("$@") >"$log" 2>&1 </dev/null; then
        printf 'done in %ss\n' "$((SECONDS - start))"
        return 0
    fi
    printf 'FAILED after %ss: %s\n' "$((SECONDS - start))" "$(log_reason "$log")"
    printf 'error: could not install %s (log: %s); install it with: %s\n' "$what" "$log" "$how" >&2
    return 1
}

# Rust itself is not installed here: rustup is the way to get it, and it asks about the machine.
setup_rust() {
    if ! command -v cargo >/dev/null 2>&1 && [[ -f "${CARGO_HOME:-$HOME/.cargo}/env" ]]; then
        # shellcheck disable=SC1091
        source "${CARGO_HOME:-$HOME/.cargo}/env"
    fi
    command -v cargo >/dev/null 2>&1 ||
        die "Rust is required and was not found: install it with rustup (https://rustup.rs), then rerun"
    command -v rustup >/dev/null 2>&1 ||
        die "rustup is required to add the wasm32 target and components (https://rustup.rs); found cargo without it"
    setup_ok "Rust: $(rustc --version)"
}

setup_node() {
    command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 ||
        die "Node.js >= 20 with npm is required and was not found: install it (e.g. apt-get install nodejs npm), then rerun"
    local major
    major="$(node -p 'process.versions.node.split(".")[0]')"
    ((major >= 20)) || die "Node.js >= 20 is required (found $(node --version)): upgrade it, then rerun"
    setup_ok "Node.js $(node --version), npm $(npm --version)"
}

setup_wasm_target() {
    if rustup target list --installed | grep -qx "$WASM_TARGET"; then
        setup_ok "Rust target $WASM_TARGET"
        return 0
    fi
    setup_install wasm-target "Rust target $WASM_TARGET" "the browser build compiles to it" \
        "rustup target add $WASM_TARGET" rustup target add "$WASM_TARGET"
}

setup_components() {
    local c missing=()
    cargo fmt --version >/dev/null 2>&1 || missing+=(rustfmt)
    cargo clippy --version >/dev/null 2>&1 || missing+=(clippy)
    if ((${#missing[@]} == 0)); then
        setup_ok "rustfmt and clippy"
        return 0
    fi
    for c in "${missing[@]}"; do
        setup_install "component-$c" "the $c component" "the tests check formatting and lints" \
            "rustup component add $c" rustup component add "$c" || return 1
    done
}

# wasm-bindgen-cli must be the crate's exact pin: the JS glue and the wasm module are made together.
wasm_bindgen_found() {
    local v
    v="$(wasm-bindgen --version 2>/dev/null || true)"
    [[ "$v" == "wasm-bindgen $WASM_BINDGEN_VERSION" ]]
}

setup_wasm_bindgen() {
    local bin
    bin="$(cargo_bin_dir)"
    # cargo's bin dir may be off PATH (a fresh CARGO_HOME); this script finds it there.
    [[ ":$PATH:" == *":$bin:"* ]] || export PATH="$bin:$PATH"
    if wasm_bindgen_found; then
        setup_ok "wasm-bindgen-cli $WASM_BINDGEN_VERSION ($(command -v wasm-bindgen))"
        return 0
    fi
    local found
    found="$(wasm-bindgen --version 2>/dev/null || echo none)"
    setup_install wasm-bindgen "wasm-bindgen-cli $WASM_BINDGEN_VERSION into $bin" \
        "the crate pins wasm-bindgen $WASM_BINDGEN_VERSION, found: $found; compiles once, ~6 min on 2 cores" \
        "cargo install wasm-bindgen-cli --version $WASM_BINDGEN_VERSION" \
        cargo install wasm-bindgen-cli --version "$WASM_BINDGEN_VERSION" --force || return 1
    hash -r
    wasm_bindgen_found || {
        printf 'error: wasm-bindgen %s was installed into %s but another one comes first on PATH (%s); remove it or put %s first\n' \
            "$WASM_BINDGEN_VERSION" "$bin" "$(command -v wasm-bindgen)" "$bin" >&2
        return 1
    }
}

npm_ci() {
    if ! npm ci --no-audit --no-fund; then
        rm -rf node_modules
        return 1
    fi
    sha256_of package-lock.json >node_modules/.anoscope-lock-sha256
}

# node_modules as package-lock.json pins it: npm's binaryen (wasm-opt) and playwright-core.
setup_npm() {
    local want
    want="$(sha256_of package-lock.json)"
    if [[ -f node_modules/.anoscope-lock-sha256 && "$(cat node_modules/.anoscope-lock-sha256)" == "$want" ]]; then
        setup_ok "npm packages (package-lock.json unchanged)"
        return 0
    fi
    setup_install npm "npm packages with npm ci" \
        "npm's binaryen for wasm-opt, playwright-core to drive Chromium in the tests" "npm ci" npm_ci
}

# tests/embed's docs toolchains (VitePress, Vite), pinned by tests/embed/package-lock.json: the
# npm package is tested inside real docs builds.
npm_ci_embed() {
    cd tests/embed
    if ! npm ci --no-audit --no-fund; then
        rm -rf node_modules
        return 1
    fi
    sha256_of package-lock.json >node_modules/.anoscope-lock-sha256
}

setup_npm_embed() {
    local want
    want="$(sha256_of tests/embed/package-lock.json)"
    if [[ -f tests/embed/node_modules/.anoscope-lock-sha256 &&
        "$(cat tests/embed/node_modules/.anoscope-lock-sha256)" == "$want" ]]; then
        setup_ok "npm packages of tests/embed (tests/embed/package-lock.json unchanged)"
        return 0
    fi
    setup_install npm-embed "VitePress and Vite into tests/embed with npm ci" \
        "the npm package is tested inside a VitePress site and a Vite app" "(cd tests/embed && npm ci)" npm_ci_embed
}

threads_toolchain_install() {
    if rustup run "$THREADS_TOOLCHAIN" rustc --version >/dev/null 2>&1; then
        rustup component add rust-src --toolchain "$THREADS_TOOLCHAIN"
    else
        rustup toolchain install "$THREADS_TOOLCHAIN" --profile minimal --component rust-src
    fi
}

# Optional: the threaded wasm build needs nightly with rust-src (std rebuilt with atomics). Without
# it the page runs on one thread, unless ANOSCOPE_REQUIRE_THREADS=1 (CI) makes it required.
setup_threads_toolchain() {
    if [[ "${ANOSCOPE_THREADS:-1}" == 0 ]]; then
        setup_skip "the $THREADS_TOOLCHAIN toolchain for the threaded wasm build (ANOSCOPE_THREADS=0)"
        return 0
    fi
    if have_threads_toolchain; then
        setup_ok "$THREADS_TOOLCHAIN toolchain with rust-src (threaded wasm build)"
        return 0
    fi
    if setup_install threads-toolchain "the $THREADS_TOOLCHAIN toolchain with rust-src" \
        "the threaded wasm build rebuilds std with atomics; optional" \
        "rustup toolchain install $THREADS_TOOLCHAIN --profile minimal --component rust-src" \
        threads_toolchain_install && have_threads_toolchain; then
        return 0
    fi
    if [[ "${ANOSCOPE_REQUIRE_THREADS:-0}" == 1 ]]; then
        printf 'error: ANOSCOPE_REQUIRE_THREADS=1 but the %s toolchain with rust-src is not available\n' "$THREADS_TOOLCHAIN" >&2
        return 1
    fi
    setup_skip "threaded wasm build: no $THREADS_TOOLCHAIN toolchain with rust-src; the page will run on one thread"
}

# apt-get install as root, or through password-less sudo; one apt-get update per run.
apt_install() {
    local sudo=()
    command -v apt-get >/dev/null 2>&1 || { echo "no apt-get on this machine" >&2; return 1; }
    if [[ "$(id -u)" != 0 ]]; then
        sudo -n true 2>/dev/null || { echo "apt-get needs root: not root, and sudo asks for a password" >&2; return 1; }
        sudo=(sudo -n)
    fi
    export DEBIAN_FRONTEND=noninteractive
    if ((APT_UPDATED == 0)); then
        "${sudo[@]}" apt-get update -q || return 1
    fi
    "${sudo[@]}" apt-get install -y -q --no-install-recommends "$@"
}

# How a person installs Debian packages by hand: as root, or through sudo.
apt_how() {
    local sudo=sudo
    [[ "$(id -u)" != 0 ]] || sudo=
    printf '%s' "${sudo:+$sudo }apt-get install $*"
}

# Debian's Chromium for the browser suite; playwright-core never downloads a browser.
setup_chromium() {
    local chromium="${ANOSCOPE_CHROMIUM:-/usr/bin/chromium}"
    if [[ -x "$chromium" ]]; then
        setup_ok "Chromium ($("$chromium" --version 2>/dev/null || echo "$chromium"))"
        return 0
    fi
    [[ -z "${ANOSCOPE_CHROMIUM:-}" ]] || die "ANOSCOPE_CHROMIUM=$ANOSCOPE_CHROMIUM is not an executable"
    setup_install chromium "Debian's chromium" "the browser tests drive it headless" \
        "$(apt_how chromium fonts-dejavu-core)" apt_install chromium fonts-dejavu-core || return 1
    # apt_install ran in setup_install's subshell: its apt-get update counts for the next step too.
    APT_UPDATED=1
}

have_lavapipe() { compgen -G "/usr/share/vulkan/icd.d/lvp_icd*.json" >/dev/null; }

# Mesa's lavapipe, a CPU Vulkan adapter: the GPU parity tests run on machines without a GPU. Without
# it they print why and pass, unless ANOSCOPE_REQUIRE_GPU=1 (CI) makes it required.
setup_lavapipe() {
    if have_lavapipe; then
        setup_ok "lavapipe (Mesa's CPU Vulkan, for the GPU parity tests)"
        return 0
    fi
    if setup_install lavapipe "Mesa's lavapipe (mesa-vulkan-drivers)" \
        "a CPU Vulkan adapter, so the GPU parity tests run without a GPU" \
        "$(apt_how mesa-vulkan-drivers)" apt_install mesa-vulkan-drivers; then
        return 0
    fi
    [[ "${ANOSCOPE_REQUIRE_GPU:-0}" != 1 ]] || return 1
    setup_skip "lavapipe: the GPU parity tests will skip"
}

# setup_step FUNCTION: runs one step; a failed one is counted and the next steps still run, so
# one run names every missing piece.
SETUP_FAILED=0
setup_step() {
    "$@" || SETUP_FAILED=$((SETUP_FAILED + 1))
}

# setup serve|test: what `./build.sh serve` (and build) or `./build.sh test` needs.
setup() {
    local what="$1" start=$SECONDS
    log "set-up for ./build.sh $what (installs only what is missing)"
    setup_rust
    setup_node
    setup_step setup_wasm_target
    [[ "$what" != test ]] || setup_step setup_components
    setup_step setup_wasm_bindgen
    setup_step setup_npm
    setup_step setup_threads_toolchain
    if [[ "$what" == test ]]; then
        setup_step setup_npm_embed
        setup_step setup_chromium
        setup_step setup_lavapipe
    fi
    if ((SETUP_FAILED)); then
        [[ "${ANOSCOPE_NO_INSTALL:-0}" != 1 ]] || die "ANOSCOPE_NO_INSTALL=1 and the pieces above are missing"
        die "set-up incomplete: $SETUP_FAILED step(s) failed above; nothing else was run"
    fi
    printf 'setup: done in %ss\n' "$((SECONDS - start))"
}

# ---------------------------------------------------------------------------
# wasm build + site assembly
# ---------------------------------------------------------------------------

cargo_wasm() {
    if [[ -n "${RUSTFLAGS:-}${CARGO_ENCODED_RUSTFLAGS:-}" ]]; then
        warn "ignoring RUSTFLAGS/CARGO_ENCODED_RUSTFLAGS for the wasm build (they would override $WASM_RUSTFLAGS)"
    fi
    env -u RUSTFLAGS -u CARGO_ENCODED_RUSTFLAGS \
        CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS="$WASM_RUSTFLAGS" \
        cargo "$@"
}

# Copies (hard-links where possible) $1 to $2, creating parent directories.
link_or_copy() {
    mkdir -p "$(dirname "$2")"
    ln -f "$1" "$2" 2>/dev/null || cp -f "$1" "$2"
}

size_report() {
    local wasm="$1" raw gz
    raw=$(wc -c <"$wasm")
    gz=$(gzip -9 -c "$wasm" | wc -c)
    raw=${raw//[[:space:]]/}
    gz=${gz//[[:space:]]/}
    printf 'wasm size: %s bytes raw, %s bytes gzip -9 (%s)\n' "$raw" "$gz" \
        "$(awk -v r="$raw" -v g="$gz" 'BEGIN { printf "%.2f MB raw, %.2f MB gzip", r/1e6, g/1e6 }')"
    if ((gz > GZIP_GOAL_BYTES)); then
        warn "gzip size $gz exceeds the goal of $GZIP_GOAL_BYTES bytes"
    else
        echo "gzip size is within the goal of $GZIP_GOAL_BYTES bytes"
    fi
}

# pkg_for KIND WASM_IN OUT [WASM_OPT_FLAGS…]: wasm-bindgen --target web (+ wasm-opt -O3 when npm's
# binaryen is installed) of WASM_IN into OUT. The result is cached under $TARGET_DIR/site-cache,
# keyed by the module's sha256, the tools' versions and this code: a rebuild whose module did not
# change copies the cached output instead of running the tools again.
pkg_for() {
    local kind="$1" wasm_in="$2" out="$3" wasm_opt="$ROOT/node_modules/.bin/wasm-opt" opt=none key cache
    shift 3
    # Only npm's binaryen: Debian's wasm-opt 108 corrupts wasm-bindgen output.
    if [[ "${ANOSCOPE_WASM_OPT:-1}" == 0 ]]; then
        opt=skipped
    elif [[ -x "$wasm_opt" ]]; then
        opt="$("$wasm_opt" --version)"
    fi
    key=$(printf '%s\n' "$(sha256_of "$wasm_in")" "$(wasm-bindgen --version)" "$opt" "$*" \
        "$(declare -f pkg_for same_origin_thread_workers)" | sha256_of /dev/stdin)
    cache="$TARGET_DIR/site-cache/pkg-$kind-${key:0:16}"
    if [[ -d "$cache" ]]; then
        echo "$kind module unchanged: wasm-bindgen and wasm-opt output reused from $cache"
    else
        log "wasm-bindgen --target web ($kind module)"
        rm -rf "$cache.tmp"
        wasm-bindgen --target web --typescript --out-dir "$cache.tmp" "$wasm_in"
        [[ "$kind" != threads* ]] || same_origin_thread_workers "$cache.tmp"
        case "$opt" in
        skipped) echo "wasm-opt: skipped (ANOSCOPE_WASM_OPT=0)" ;;
        none) echo "wasm-opt: not installed (run 'npm ci' for npm's binaryen); shipping wasm-bindgen output as is" ;;
        *)
            log "wasm-opt -O3 ($opt)"
            "$wasm_opt" -O3 "$@" "$cache.tmp/anoscope_bg.wasm" -o "$cache.tmp/anoscope_bg.wasm.opt"
            mv -f "$cache.tmp/anoscope_bg.wasm.opt" "$cache.tmp/anoscope_bg.wasm"
            ;;
        esac
        mv "$cache.tmp" "$cache"
        # Keep the two newest outputs of each kind.
        find "$TARGET_DIR/site-cache" -maxdepth 1 -name "pkg-$kind-*" -printf '%T@ %p\n' | sort -rn |
            tail -n +3 | cut -d' ' -f2- | xargs -r rm -rf
    fi
    mkdir -p "$out"
    cp -R "$cache/." "$out/"
}

build_site() {
    log "cargo build (wasm32, release, $WASM_RUSTFLAGS)"
    cargo_wasm build -p anoscope --lib --release --target "$WASM_TARGET"
    local wasm_in="$TARGET_DIR/$WASM_TARGET/release/anoscope.wasm"
    [[ -f "$wasm_in" ]] || die "expected $wasm_in after the build"

    rm -rf "$DIST"
    pkg_for single "$wasm_in" "$PKG" "${WASM_OPT_FEATURES[@]}"
    local wasm_out="$PKG/anoscope_bg.wasm"

    build_relaxed
    build_threads
    [[ "${ANOSCOPE_RELAXED:-1}" == 0 ]] || build_threads relaxed

    log "assembling www/dist"
    local f
    for f in www/*; do
        [[ "$f" == www/dist ]] && continue
        cp -R "$f" "$DIST/"
    done
    if [[ -f weights/manifest.json ]]; then
        mkdir -p "$DIST/weights"
        cp -f weights/manifest.json "$DIST/weights/manifest.json"
    fi
    if [[ -d weights/checkpoints ]]; then
        # Finished, verified files only (downloads in progress end in .part/.unverified).
        while IFS= read -r -d '' f; do
            link_or_copy "$f" "$DIST/$f"
        done < <(find weights/checkpoints -type f \( -name '*.json' -o -name '*.safetensors' \) -print0)
    fi
    test_model_site
    log "models.json + build.json (build id stamped into the page; sha256 of the wasm, every page and checkpoint file)"
    node tests/browser/site-index.mjs "$DIST"
    size_report "$wasm_out"
    echo "site: $DIST"
}

# wasm-bindgen-rayon (no-bundler) starts its pool workers from a blob: copy of its helper script,
# for pages that load it from another origin. The page's CSP allows same-origin workers only
# (worker-src 'self', no blob:), and the helper is served by the site itself: start the workers
# from the helper's own URL instead. Fails loudly if a new version changes that code.
same_origin_thread_workers() {
    local helper
    helper=$(find "$1/snippets" -name workerHelpers.no-bundler.js | head -n 1)
    [[ -n "$helper" ]] || die "wasm-bindgen-rayon's workerHelpers.no-bundler.js not found under $1/snippets"
    node -e '
const fs = require("fs");
const path = process.argv[1];
const src = fs.readFileSync(path, "utf8");
const from = /let scriptBlob = await fetch\(import\.meta\.url\)\.then\(r => r\.blob\(\)\);\s*let url = URL\.createObjectURL\(scriptBlob\);/;
if (!from.test(src)) { console.error(`${path}: the blob: worker code was not found; update build.sh`); process.exit(1); }
fs.writeFileSync(path, src.replace(from, "let url = import.meta.url; // same origin: allowed by worker-src self"));
' "$helper"
}

have_threads_toolchain() {
    command -v rustup >/dev/null 2>&1 || return 1
    local sysroot
    sysroot="$(rustup run "$THREADS_TOOLCHAIN" rustc --print sysroot 2>/dev/null)" || return 1
    [[ -d "$sysroot/lib/rustlib/src/rust/library" ]]
}

# Both variants of a build write the same anoscope.wasm (a wasm cdylib's name has no hash), and
# cargo judges a unit fresh by its fingerprint and the output's mtime: after the other variant's
# build it would hand over that variant's module. Deleting the module around the relaxed-SIMD
# builds makes each build write its own (this crate is compiled again; its dependencies are not).
forget_wasm() {
    rm -f "$1/anoscope.wasm" "$1/deps/anoscope.wasm"
}

# www/dist/pkg-relaxed: the single-threaded build with relaxed SIMD (the crate's relaxed-simd feature).
build_relaxed() {
    if [[ "${ANOSCOPE_RELAXED:-1}" == 0 ]]; then
        echo "relaxed-SIMD wasm build: skipped (ANOSCOPE_RELAXED=0); every browser runs the SIMD128 build"
        return 0
    fi
    log "cargo build (wasm32, release, $WASM_RUSTFLAGS, --features relaxed-simd)"
    local wasm_in="$TARGET_DIR/$WASM_TARGET/release/anoscope.wasm"
    forget_wasm "$TARGET_DIR/$WASM_TARGET/release"
    cargo_wasm build -p anoscope --lib --release --target "$WASM_TARGET" --features relaxed-simd
    [[ -f "$wasm_in" ]] || die "expected $wasm_in after the relaxed-SIMD build"
    pkg_for relaxed "$wasm_in" "$DIST/pkg-relaxed" "${WASM_OPT_FEATURES[@]}" --enable-relaxed-simd
    forget_wasm "$TARGET_DIR/$WASM_TARGET/release"
    printf 'relaxed-SIMD '
    size_report "$DIST/pkg-relaxed/anoscope_bg.wasm"
}

# www/dist/pkg-threads: the same crate with `--features threads`, built by the nightly toolchain;
# `build_threads relaxed`: www/dist/pkg-threads-relaxed, the same with relaxed SIMD.
build_threads() {
    local variant="${1:-}" suffix="" features=threads kind=threads
    if [[ "$variant" == relaxed ]]; then
        suffix="-relaxed"
        features=threads,relaxed-simd
        kind=threads-relaxed
    fi
    if [[ "${ANOSCOPE_THREADS:-1}" == 0 ]]; then
        echo "threaded wasm build: skipped (ANOSCOPE_THREADS=0); the page will run on one thread"
        return 0
    fi
    if ! have_threads_toolchain; then
        echo "threaded wasm build: skipped; it needs the $THREADS_TOOLCHAIN toolchain with rust-src" \
            "(rustup toolchain install $THREADS_TOOLCHAIN --profile minimal --component rust-src)." \
            "The page will run on one thread."
        return 0
    fi
    log "cargo +$THREADS_TOOLCHAIN rustc (wasm32, release, threads: atomics, build-std${suffix:+, relaxed SIMD})"
    local dir="$TARGET_DIR/threads"
    [[ -z "$suffix" ]] || forget_wasm "$dir/$WASM_TARGET/release"
    env -u RUSTFLAGS -u CARGO_ENCODED_RUSTFLAGS CARGO_TARGET_DIR="$dir" \
        CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS="$WASM_THREADS_RUSTFLAGS" \
        cargo "+$THREADS_TOOLCHAIN" rustc -p anoscope --lib --release --target "$WASM_TARGET" \
        --no-default-features --features "$features" -Z build-std=panic_abort,std -- "${WASM_THREADS_LINK_ARGS[@]}"
    local wasm_in="$dir/$WASM_TARGET/release/anoscope.wasm" out="$DIST/pkg-threads$suffix"
    [[ -f "$wasm_in" ]] || die "expected $wasm_in after the threaded build"
    pkg_for "$kind" "$wasm_in" "$out" "${WASM_OPT_FEATURES[@]}" --enable-threads ${suffix:+--enable-relaxed-simd}
    [[ -z "$suffix" ]] || forget_wasm "$dir/$WASM_TARGET/release"
    printf 'threaded%s ' "${suffix:+ relaxed-SIMD}"
    size_report "$out/anoscope_bg.wasm"
}

# The npm package (packages/anoscope): the element, the JS API, the worker and both wasm builds of
# www/dist, packed with npm pack into packages/anoscope/dist/.
cmd_package() {
    log "npm package anoscope -> packages/anoscope/dist"
    node packages/anoscope/assemble.mjs "$DIST" "$ROOT/packages/anoscope/dist"
}

# The native CLI (debug profile: the one cargo test builds), for prompt files and serving.
native_cli() {
    local exe="$TARGET_DIR/debug/anoscope"
    cargo build -q -p anoscope --bin anoscope >&2
    [[ -x "$exe" ]] || die "native CLI $exe missing after the build"
    printf '%s' "$exe"
}

# The tiny random test model (tests/fixtures/hf_tiny) and its prompt file, served as
# "interface test model (random weights, meaningless scores)" under models/test-tiny/.
test_model_site() {
    local src=tests/fixtures/hf_tiny dst="$DIST/models/test-tiny" cache="$TARGET_DIR/site-cache" exe sum
    [[ -f "$src/config.json" && -f "$src/model.safetensors" ]] || die "test model $src missing"
    log "interface test model -> www/dist/models/test-tiny"
    mkdir -p "$dst" "$cache"
    link_or_copy "$src/config.json" "$dst/config.json"
    link_or_copy "$src/model.safetensors" "$dst/model.safetensors"
    # The prompt file depends on the weights and on the crate's prompt sets: rebuild it when either changes.
    sum=$(cat "$src/model.safetensors" crate/src/detect/prompts.rs weights/prompts/descriptions.json | sha256_of /dev/stdin)
    if [[ ! -f "$cache/test-tiny-$sum.safetensors" ]]; then
        exe=$(native_cli)
        "$exe" prompts build --model "$src" --out "$cache/test-tiny-$sum.safetensors.part"
        mv -f "$cache/test-tiny-$sum.safetensors.part" "$cache/test-tiny-$sum.safetensors"
    fi
    link_or_copy "$cache/test-tiny-$sum.safetensors" "$dst/prompts.safetensors"
}

# ---------------------------------------------------------------------------
# serve
# ---------------------------------------------------------------------------

cmd_serve() {
    local port=8080
    while (($#)); do
        case "$1" in
        --port)
            [[ $# -ge 2 ]] || die "--port needs a value"
            port="$2"
            shift 2
            ;;
        --port=*)
            port="${1#--port=}"
            shift
            ;;
        *) die "serve: unknown argument '$1' (usage: ./build.sh serve [--port N])" ;;
        esac
    done
    if ! [[ "$port" =~ ^[0-9]{1,5}$ ]] || ((10#$port > 65535)); then
        die "invalid port '$port'"
    fi
    local start=$SECONDS
    setup serve
    build_site
    local exe
    exe=$(native_cli)
    log "ready in $((SECONDS - start))s; serving www/dist"
    cat <<'EOF2'
next: open the URL below. To try the page at once click "Use the interface test model" (random
      weights: it shows how the page works, its scores mean nothing), then drop, paste or pick a
      photo. For real weights click "Download clip-vit-base-patch16 from huggingface.co …", or stop
      the server, run ./build.sh weights and serve again. Ctrl-C stops the server.
EOF2
    exec "$exe" serve --dir "$DIST" --port "$port"
}

# ---------------------------------------------------------------------------
# test
# ---------------------------------------------------------------------------

PHASE_NAMES=()
PHASE_RESULTS=()
PHASE_TIMES=()

# run_phase NAME FUNCTION: runs FUNCTION in a subshell with errexit active and
# records PASS/FAIL and its duration. Must not be called from a condition.
run_phase() {
    local name="$1" fn="$2" start rc
    log "[$name]"
    start=$SECONDS
    set +e
    (
        set -e
        "$fn"
    )
    rc=$?
    set -e
    PHASE_NAMES+=("$name")
    PHASE_TIMES+=("$((SECONDS - start))")
    if ((rc == 0)); then PHASE_RESULTS+=(PASS); else PHASE_RESULTS+=("FAIL (exit $rc)"); fi
    return 0
}

skip_phase() {
    PHASE_NAMES+=("$1")
    PHASE_TIMES+=(0)
    PHASE_RESULTS+=("SKIP ($2)")
}

phase_ok() {
    local i
    for i in "${!PHASE_NAMES[@]}"; do
        [[ "${PHASE_NAMES[$i]}" == "$1" ]] && [[ "${PHASE_RESULTS[$i]}" == PASS ]] && return 0
    done
    return 1
}

t_fmt() { cargo fmt --all --check; }
t_clippy() { cargo clippy --workspace --all-targets -- -D warnings; }
t_cargo_test() {
    cargo test --workspace
    # The native CLI for the parity test: same (dev) profile, so it reuses the
    # dependencies cargo test just built.
    cargo build -p anoscope --bin anoscope
}
t_wasm_build() { build_site; }
# The set-up's own checks: a newcomer's machine, simulated (tests/setup).
t_setup() { node --test tests/setup/*.test.mjs; }

t_parity() {
    local exe="$TARGET_DIR/debug/anoscope" layout i model
    [[ -x "$exe" ]] || die "native CLI $exe missing"
    for layout in "${LAYOUTS[@]}"; do
        [[ -d "tests/fixtures/$layout" ]] || die "fixture tests/fixtures/$layout missing"
        [[ -f "tests/fixtures/${layout}_expected.safetensors" ]] ||
            die "fixture tests/fixtures/${layout}_expected.safetensors missing"
    done
    rm -rf "$PARITY_DIR"
    mkdir -p "$PARITY_DIR"
    echo "writing per-image pixel files to $PARITY_DIR"
    node tests/wasm/prepare.mjs "$PARITY_DIR"
    for layout in "${LAYOUTS[@]}"; do
        model="tests/fixtures/$layout"
        for i in img0 img1 img48; do
            echo "native: anoscope embed --model $model --pixels ${layout}_$i.safetensors"
            "$exe" embed --model "$model" --pixels "$PARITY_DIR/${layout}_${i}.pixels.safetensors" \
                --surgery-layers 2 --out "$PARITY_DIR/${layout}_${i}.safetensors"
        done
        echo "native: anoscope embed-text --model $model"
        "$exe" embed-text --model "$model" --text "${PROMPTS[0]}" --text "${PROMPTS[1]}" \
            --out "$PARITY_DIR/${layout}_text.safetensors"
    done
    # Explicit file list: node >= 21 treats --test arguments as globs, not directories.
    ANOSCOPE_PARITY_DIR="$PARITY_DIR" node --test tests/wasm/*.test.mjs
    if [[ -f "$PARITY_DIR/summary.txt" ]]; then
        log "wasm parity: max|Δ| per output"
        cat "$PARITY_DIR/summary.txt"
    fi
}

# The page in headless Chromium (playwright-core, Debian's /usr/bin/chromium; no browser download).
t_browser() {
    [[ -x "${ANOSCOPE_CHROMIUM:-/usr/bin/chromium}" ]] ||
        die "chromium missing: apt-get install chromium (.ci/run does this)"
    [[ -d node_modules/playwright-core ]] || die "playwright-core missing: npm ci"
    # Explicit file list (node >= 21 treats --test arguments as globs). One file at a time:
    # each starts its own server and browser, and the machine has 2 cores.
    node --test --test-concurrency=1 tests/browser/*.test.mjs
}

# The npm package inside real docs builds (VitePress, Vite, a CDN-like path), in headless Chromium.
# The tests pack www/dist themselves (packages/anoscope/assemble.mjs) and install the tarball.
t_embed() {
    [[ -d tests/embed/node_modules/vitepress ]] || die "tests/embed's npm packages missing: (cd tests/embed && npm ci)"
    node --test --test-concurrency=1 tests/embed/*.test.mjs
}

cmd_test() {
    local total_start=$SECONDS
    command -v node >/dev/null 2>&1 || die "node (>= 20) is required for the wasm parity test"

    run_phase "cargo fmt --check" t_fmt
    run_phase "cargo clippy -D warnings" t_clippy
    run_phase "set-up (node --test)" t_setup
    run_phase "cargo test (native)" t_cargo_test
    run_phase "wasm build + site" t_wasm_build
    if phase_ok "cargo test (native)" && phase_ok "wasm build + site"; then
        run_phase "wasm parity (node --test)" t_parity
        run_phase "browser (chromium)" t_browser
        run_phase "npm package in docs builds" t_embed
    else
        skip_phase "wasm parity (node --test)" "needs the native CLI and the wasm build"
        skip_phase "browser (chromium)" "needs the native CLI and the wasm build"
        skip_phase "npm package in docs builds" "needs the native CLI and the wasm build"
    fi

    local i failed=0
    printf '\n==================== anoscope test summary ====================\n'
    for i in "${!PHASE_NAMES[@]}"; do
        printf '  %-30s %-22s %5ss\n' "${PHASE_NAMES[$i]}" "${PHASE_RESULTS[$i]}" "${PHASE_TIMES[$i]}"
        [[ "${PHASE_RESULTS[$i]}" == PASS ]] || failed=1
    done
    printf '  %-30s %-22s %5ss\n' "total" "" "$((SECONDS - total_start))"
    if ((failed)); then
        printf 'RESULT: FAILED\n'
        exit 1
    fi
    printf 'RESULT: ALL PASSED\n'
}

# ---------------------------------------------------------------------------
# weights
# ---------------------------------------------------------------------------

sha256_of() {
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum "$1" | cut -d' ' -f1
    else
        shasum -a 256 "$1" | cut -d' ' -f1
    fi
}

offline_help() {
    cat >&2 <<'EOF'

The checkpoint download did not complete. Alternatives:
  * On a machine with network access run ./build.sh weights there (or fetch the
    files listed in weights/manifest.json by hand), then copy the folder into
    weights/checkpoints/<name>/ here (see weights/README.md).
  * The native CLI takes any checkpoint folder directly:
        anoscope embed --model /path/to/checkpoint --out OUT.safetensors IMG
  * The page accepts a checkpoint picked from disk: choose the config
    (config.json or open_clip_config.json) and the .safetensors file.
EOF
}

# Prints "model<TAB>file<TAB>url<TAB>size<TAB>sha256<TAB>git_blob_sha1" per manifest file (null -> "-").
manifest_rows() {
    node -e '
const m = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
for (const model of m.models) for (const f of model.files)
  console.log([model.name, f.name, f.url, f.size ?? "-", f.sha256 ?? "-", f.git_blob_sha1 ?? "-"].join("\t"));
' weights/manifest.json
}

# Prints "model<TAB>kind<TAB>backbone<TAB>mode<TAB>gated<TAB>repo<TAB>optional<TAB>convert" per
# manifest model (kind "clip" unless "learned"; "-" where absent; convert: the page's variants
# written next to the checkpoint, comma-separated, "f16" unless the entry's "convert" lists more).
manifest_models() {
    node -e '
const m = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
for (const model of m.models)
  console.log([model.name, model.kind ?? "clip", model.backbone ?? "-", model.mode ?? "-",
    model.gated ? "gated" : "-", model.repo ?? "-", model.optional ? "optional" : "-",
    (model.convert ?? ["f16"]).join(",")].join("\t"));
' weights/manifest.json
}

# The git blob id of a file (`git hash-object`): sha1 of "blob <size>\0" and the content.
git_blob_sha1_of() {
    local size
    size=$(wc -c <"$1")
    size=${size//[[:space:]]/}
    if command -v sha1sum >/dev/null 2>&1; then
        { printf 'blob %s\0' "$size"; cat "$1"; } | sha1sum | cut -d' ' -f1
    else
        { printf 'blob %s\0' "$size"; cat "$1"; } | shasum -a 1 | cut -d' ' -f1
    fi
}

cmd_weights() {
    local tofu=0 convert=1 only=() a
    for a in "$@"; do
        case "$a" in
        --trust-on-first-use) tofu=1 ;;
        --no-convert) convert=0 ;;
        -h | --help)
            cat <<'EOF'
usage: ./build.sh weights [--trust-on-first-use] [--no-convert] [MODEL ...]
Downloads the checkpoints in weights/manifest.json (without MODEL: those not marked
optional) to weights/checkpoints/<MODEL>/,
checks size and sha256, then converts them for the browser: <MODEL>-f16 (the reference)
and, where the manifest's "convert" lists q8, <MODEL>-q8 (int8 image tower: faster, smaller).
Files whose sha256 is not pinned in the manifest are refused unless
--trust-on-first-use is given (the computed sha256 is printed so it can be pinned)
or their pinned git_blob_sha1 matches.
A mode's learned files (MODEL anomalyclip or adaptclip) come with their CLIP backbone
and are converted with `anoscope convert --learned` once it is there.
Gated Hugging Face repositories (adaptclip) need HF_TOKEN set to a read token of an
account that accepted the repository's terms.
EOF
            return 0
            ;;
        -*) die "weights: unknown option $a" ;;
        *) only+=("$a") ;;
        esac
    done
    command -v node >/dev/null 2>&1 || die "node is required to read weights/manifest.json"
    command -v curl >/dev/null 2>&1 || die "curl is required to download checkpoints"

    local rows models
    rows="$(manifest_rows)"
    models="$(manifest_models)"
    # No names: the models that are not optional (optional ones are fetched when named).
    local kind backbone mode gated repo optional extra=()
    if ((${#only[@]} == 0)); then
        while IFS=$'\t' read -r model kind backbone mode gated repo optional _; do
            if [[ $optional == optional ]]; then extra+=("$model"); else only+=("$model"); fi
        done <<<"$models"
        ((${#only[@]})) || die "weights: every model in weights/manifest.json is optional: name the ones to fetch"
    fi
    # Every name asked for is in the manifest; a learned model brings its backbone (fetched first).
    if ((${#only[@]})); then
        for a in "${only[@]}"; do
            if ! grep -q "^$a"$'\t' <<<"$models"; then
                die "weights: no model '$a' in weights/manifest.json (models: $(cut -f1 <<<"$models" | paste -sd' ' -))"
            fi
            backbone=$(awk -F'\t' -v m="$a" '$1 == m { print $3 }' <<<"$models")
            if [[ "$backbone" != - && " ${only[*]} " != *" $backbone "* ]]; then
                only=("$backbone" "${only[@]}")
            fi
        done
    fi
    local model file url size sha blob dest have got gotblob origin rc refused=0 failed=0 offline=0
    while IFS=$'\t' read -r model file url size sha blob; do
        if ((${#only[@]})) && [[ " ${only[*]} " != *" $model "* ]]; then continue; fi
        dest="weights/checkpoints/$model/$file"
        mkdir -p "weights/checkpoints/$model"
        if [[ -f "$dest" ]]; then
            origin=existing
            log "verifying existing $dest"
            mv -f "$dest" "$dest.part"
        elif [[ -f "$dest.unverified" ]]; then
            origin=existing
            log "re-checking earlier unverified download $dest.unverified"
            mv -f "$dest.unverified" "$dest.part"
        else
            origin=download
            log "downloading $model/$file"
            echo "  $url"
            # A Hugging Face token (gated repositories) goes to curl on stdin, never on its command line.
            local auth=()
            if [[ -n "${HF_TOKEN:-}" && "$url" == https://huggingface.co/* ]]; then auth=(-H @-); fi
            rc=0
            curl -fL --retry 3 --connect-timeout 20 --progress-bar "${auth[@]}" -o "$dest.part" "$url" \
                <<<"Authorization: Bearer ${HF_TOKEN:-}" || rc=$?
            if ((rc)); then
                rm -f "$dest.part"
                gated=$(awk -F'\t' -v m="$model" '$1 == m { print $5 }' <<<"$models")
                if [[ $rc == 22 && $gated == gated ]]; then
                    repo=$(awk -F'\t' -v m="$model" '$1 == m { print $6 }' <<<"$models")
                    printf 'error: %s refused the download of %s/%s (HTTP error): the repository is gated.\n' \
                        "$repo" "$model" "$file" >&2
                    printf '  Accept its terms at %s with a Hugging Face account, then rerun with HF_TOKEN set\n' \
                        "$repo" >&2
                    printf '  to a read token of that account (or place the file by hand: weights/README.md).\n' >&2
                    failed=1
                    continue
                fi
                printf 'error: download failed (offline or blocked?): %s\n' "$url" >&2
                offline=1
                break
            fi
        fi
        have=$(wc -c <"$dest.part")
        have=${have//[[:space:]]/}
        got=$(sha256_of "$dest.part")
        gotblob=-
        [[ "$blob" != - ]] && gotblob=$(git_blob_sha1_of "$dest.part")
        if [[ "$size" != - && "$have" != "$size" ]] || [[ "$sha" != - && "$got" != "$sha" ]] ||
            [[ "$blob" != "$gotblob" ]]; then
            echo "error: $model/$file does not match weights/manifest.json" >&2
            echo "  got size $have sha256 $got git blob $gotblob; expected size $size sha256 $sha git blob $blob" >&2
            if [[ $origin == download ]]; then
                rm -f "$dest.part"
                echo "  the download was deleted" >&2
            else
                mv -f "$dest.part" "$dest.rejected"
                echo "  your file was moved to $dest.rejected" >&2
            fi
            failed=1
            continue
        fi
        if [[ "$sha" != - ]]; then
            mv -f "$dest.part" "$dest"
            if [[ "$blob" != - ]]; then
                echo "ok: $dest ($have bytes, sha256 and git blob verified)"
            else
                echo "ok: $dest ($have bytes, sha256 verified)"
            fi
        elif [[ "$blob" != - ]]; then
            mv -f "$dest.part" "$dest"
            echo "ok: $dest ($have bytes, git blob $blob verified)"
            echo "  sha256 $got  <- pin it in weights/manifest.json"
        elif ((tofu)); then
            mv -f "$dest.part" "$dest"
            echo "accepted on first use (--trust-on-first-use): $dest"
            echo "  size $have, sha256 $got  <- pin these in weights/manifest.json"
        else
            mv -f "$dest.part" "$dest.unverified"
            echo "refused: $model/$file has no pinned sha256 in weights/manifest.json" >&2
            echo "  file kept as $dest.unverified (size $have, sha256 $got)" >&2
            echo "  check it against the publisher, then pin it in the manifest or rerun with --trust-on-first-use" >&2
            refused=1
        fi
    done <<<"$rows"

    if ((offline)); then
        offline_help
        exit 1
    fi
    if ((failed)); then
        echo "error: some files failed verification or download (see above); nothing was converted" >&2
        exit 1
    fi

    # Models whose every manifest file is now in place.
    local complete=() m f
    while IFS=$'\t' read -r model file _; do
        if ((${#only[@]})) && [[ " ${only[*]} " != *" $model "* ]]; then continue; fi
        [[ " ${complete[*]} " == *" $model "* ]] || complete+=("$model")
    done <<<"$rows"
    for m in "${!complete[@]}"; do
        while IFS=$'\t' read -r model file _; do
            [[ "$model" == "${complete[$m]}" && ! -f "weights/checkpoints/$model/$file" ]] && unset "complete[$m]" && break
        done <<<"$rows"
    done

    # CLIP checkpoints and learned files apart.
    local clips=() learned=()
    for m in "${complete[@]}"; do
        kind=$(awk -F'\t' -v m="$m" '$1 == m { print $2 }' <<<"$models")
        if [[ $kind == learned ]]; then learned+=("$m"); else clips+=("$m"); fi
    done

    # The page's variants of each checkpoint, next to it: NAME-f16 (the reference) and, where the
    # manifest's "convert" lists it, NAME-q8 (the image tower's block linear layers in int8: faster
    # on the CPU, smaller; docs/speed.md). The page offers both (models.json groups them).
    if ((convert)) && ((${#clips[@]})); then
        log "converting for the browser (f16; q8 where the manifest lists it)"
        local dtypes dt out bytes
        for m in "${clips[@]}"; do
            dtypes=$(awk -F'\t' -v m="$m" '$1 == m { print $8 }' <<<"$models")
            for dt in ${dtypes//,/ }; do
                out="weights/checkpoints/$m-$dt"
                if cargo run --release -q -p anoscope -- convert --model "weights/checkpoints/$m" \
                    --dtype "$dt" --out "$out"; then
                    bytes=$(cat "$out"/*model.safetensors | wc -c)
                    bytes=$(awk -v b="${bytes//[[:space:]]/}" 'BEGIN { printf "%d bytes, %.1f MB", b, b / 1e6 }')
                    case "$dt" in
                    q8) echo "ok: $out (q8: int8 image tower, faster and smaller, for the page; $bytes)" ;;
                    *) echo "ok: $out ($dt, the page's reference; $bytes)" ;;
                    esac
                else
                    echo "error: converting weights/checkpoints/$m to $dt failed" >&2
                    refused=1
                fi
            done
        done
    fi
    if ((${#clips[@]})); then
        log "building the bundled prompt sets (every category, encoded once)"
        for m in "${clips[@]}"; do
            for d in "weights/checkpoints/$m" "weights/checkpoints/$m-f16" "weights/checkpoints/$m-q8"; do
                [[ -d "$d" ]] || continue
                cargo run --release -q -p anoscope -- prompts build --model "$d" --out "$d/prompts.safetensors" ||
                    refused=1
            done
        done
    fi
    # Learned files: each official .pth also as f16 safetensors with the mode's text features
    # computed by its backbone (`anoscope convert --learned FILE --model BACKBONE`), so the page
    # needs no text tower. The .pth stays: `detect --learned` reads it as published.
    if ((convert)) && ((${#learned[@]})); then
        log "converting the learned files to f16 safetensors"
        local has_learned=0 pth
        if cargo run --release -q -p anoscope -- convert --help 2>/dev/null | grep -q -- '--learned'; then has_learned=1; fi
        for m in "${learned[@]}"; do
            backbone=$(awk -F'\t' -v m="$m" '$1 == m { print $3 }' <<<"$models")
            if ((!has_learned)); then
                echo "note: this anoscope has no 'convert --learned' yet: $m's .pth files are kept as published"
                continue
            fi
            if [[ " ${complete[*]} " != *" $backbone "* ]]; then
                echo "error: $m needs its backbone weights/checkpoints/$backbone to convert; it is not complete" >&2
                refused=1
                continue
            fi
            while IFS=$'\t' read -r model file _; do
                [[ "$model" == "$m" && "$file" == *.pth ]] || continue
                pth="weights/checkpoints/$m/$file"
                if cargo run --release -q -p anoscope -- convert --learned "$pth" --model "weights/checkpoints/$backbone" \
                    --dtype f16 --out "${pth%.pth}-f16.safetensors"; then
                    echo "ok: ${pth%.pth}-f16.safetensors (f16, with its text features, for the page)"
                else
                    echo "error: converting $pth failed (the .pth is kept and usable with --learned)" >&2
                    refused=1
                fi
            done <<<"$rows"
        done
    fi
    for f in "${complete[@]}"; do echo "ready: weights/checkpoints/$f"; done
    if ((${#extra[@]})); then
        echo "also in the manifest, fetched when named: ./build.sh weights ${extra[*]}"
    fi
    if ((refused)); then
        echo "not everything was accepted or converted; see the messages above" >&2
        exit 1
    fi
    echo "checkpoints: $ROOT/weights/checkpoints"
}

# ---------------------------------------------------------------------------

main() {
    local cmd="${1:-build}"
    (($#)) && shift
    case "$cmd" in
    build)
        (($# == 0)) || die "build takes no arguments"
        setup serve
        build_site
        ;;
    package)
        (($# == 0)) || die "package takes no arguments"
        setup serve
        build_site
        cmd_package
        ;;
    setup)
        (($# <= 1)) || die "usage: ./build.sh setup [serve|test]"
        case "${1:-test}" in
        serve | test) setup "${1:-test}" ;;
        *) die "usage: ./build.sh setup [serve|test]" ;;
        esac
        ;;
    serve) cmd_serve "$@" ;;
    test)
        (($# == 0)) || die "test takes no arguments"
        setup test
        cmd_test
        ;;
    weights) cmd_weights "$@" ;;
    help | -h | --help) usage ;;
    *)
        usage >&2
        die "unknown command '$cmd'"
        ;;
    esac
}

main "$@"
