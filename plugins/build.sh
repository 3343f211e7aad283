#!/usr/bin/env bash
# Builds every Rust plugin under plugins/ (each plugins/<dir>/Cargo.toml, a workspace member) as
# a wasm32-wasip2 component and copies it to <target-dir>/plugins/<package-name>.wasm, where
# <target-dir> is cargo's: $CARGO_TARGET_DIR if set, else <workspace>/target.
#
#   bash plugins/build.sh            # all plugins
#   bash plugins/build.sh -q         # extra args go to cargo (e.g. -q, --locked, --offline)
#
# One cargo invocation builds all plugins (profile `plugin`: opt-level s, LTO, panic=abort,
# strip). Unchanged outputs are not copied again, so their mtimes stay stable and a no-op run
# takes about as long as cargo's freshness check. Fails if an output is not a component.
#
# Then builds the Python (componentize-py) and JavaScript (componentize-js) apps, installing
# their pinned toolchains on first use; see the second half of this file.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

target_triple=wasm32-wasip2
profile=plugin

# Every plugins/<dir>/Cargo.toml is a plugin; its .wasm is named after its package.
plugins=()
for manifest in plugins/*/Cargo.toml; do
    name="$(sed -n 's/^name *= *"\(.*\)"/\1/p' "$manifest" | head -n 1)"
    [[ -n "$name" ]] || { echo "build.sh: no package name in $manifest" >&2; exit 1; }
    plugins+=("$name")
done
[[ ${#plugins[@]} -gt 0 ]] || { echo "build.sh: no plugins found under plugins/" >&2; exit 1; }

# rust-toolchain.toml lists the target, but rustup adds it only when it installs the
# toolchain; a toolchain installed earlier without it needs this one-time step.
if command -v rustup >/dev/null 2>&1 \
    && ! rustup target list --installed 2>/dev/null | grep -qx "$target_triple"; then
    echo "build.sh: installing the $target_triple target" >&2
    rustup target add "$target_triple"
fi

pkg_args=()
for p in "${plugins[@]}"; do pkg_args+=(-p "$p"); done
cargo build --profile "$profile" --target "$target_triple" "${pkg_args[@]}" "$@"

# Ask cargo where its target dir is: honours CARGO_TARGET_DIR and build.target-dir.
target_dir="$(cargo metadata --format-version 1 --no-deps \
    | grep -o '"target_directory":"[^"]*"' | head -n 1 | sed 's/^"target_directory":"\(.*\)"$/\1/')"
[[ -n "$target_dir" ]] || target_dir="${CARGO_TARGET_DIR:-$root/target}"
case "$target_dir" in /*) ;; *) target_dir="$root/$target_dir" ;; esac
out_dir="$target_dir/plugins"
mkdir -p "$out_dir"

for p in "${plugins[@]}"; do
    file="${p//-/_}.wasm"
    src="$target_dir/$target_triple/$profile/$file"
    dst="$out_dir/$p.wasm"
    [[ -f "$src" ]] || { echo "build.sh: $p: expected $src, not found" >&2; exit 1; }
    # A component starts with "\0asm" and version/layer 0d 00 01 00; a core module has
    # 01 00 00 00 there (e.g. a crate built for wasm32-unknown-unknown or wasm32-wasip1).
    magic="$(head -c 8 "$src" | od -An -tx1 | tr -d ' \n')"
    if [[ "$magic" != "0061736d0d000100" ]]; then
        echo "build.sh: $p: $src is not a WebAssembly component (first bytes: $magic)" >&2
        exit 1
    fi
    if ! cmp -s "$src" "$dst"; then
        # Copy then rename, with a per-process temp name: a reader (or a concurrent run of
        # this script, e.g. parallel test processes) never sees a half-written file.
        cp "$src" "$dst.tmp.$$"
        mv -f "$dst.tmp.$$" "$dst"
    fi
    printf '%-12s %7d bytes  %s\n' "$p" "$(wc -c <"$dst")" "$dst"
done

# ---------------------------------------------------------------------------------------------
# Apps in other languages. Each is a directory under plugins/ without a Cargo.toml:
#   plugins/<name>/requirements.txt + app.py   Python, built with componentize-py
#   plugins/<name>/package.json     + app.js   JavaScript, built with componentize-js
# Output: <target-dir>/plugins/<name>.wasm, like the Rust plugins.
#
# The toolchains are installed here, from the registries only, at the exact versions the
# plugin's own files pin (requirements.txt; package.json + package-lock.json):
#   Python: a venv per distinct requirements.txt, <target-dir>/plugin-tools/py-<hash>/
#   JavaScript: `npm ci` into plugins/<name>/node_modules/ (gitignored)
# A component is rebuilt only when its inputs change: the stamp <out>/.<name>.inputs holds a
# hash of the plugin's sources, its pins, the WIT contract and the build command, so a no-op
# run costs a few hashes (componentize takes 10–20 s per app).

# Serialise the non-cargo part across concurrent runs (e.g. several test processes).
if command -v flock >/dev/null 2>&1; then
    exec 9>"$out_dir/.build.lock"
    flock 9
fi

hash_files() { # the sha256 of the named files' contents and names, in order
    sha256sum "$@" | sha256sum | cut -c1-64
}

# The plugin's input files (sources, pins), excluding installed dependencies.
plugin_inputs() {
    (cd "$1" && find . -type f ! -path './node_modules/*' ! -path './__pycache__/*' \
        ! -name '*.wasm' ! -name '*.pyc' | LC_ALL=C sort)
}

# Whether <name>'s component is up to date for the inputs hash $2; if not, the caller builds.
fresh() {
    [[ -f "$out_dir/$1.wasm" && -f "$out_dir/.$1.inputs" && "$(cat "$out_dir/.$1.inputs")" == "$2" ]]
}

# Checks the output is a component, then installs it atomically with its stamp.
install_component() { # name tmpfile inputs-hash
    local magic
    magic="$(head -c 8 "$2" | od -An -tx1 | tr -d ' \n')"
    if [[ "$magic" != "0061736d0d000100" ]]; then
        echo "build.sh: $1: output is not a WebAssembly component (first bytes: $magic)" >&2
        exit 1
    fi
    mv -f "$2" "$out_dir/$1.wasm"
    printf '%s\n' "$3" >"$out_dir/.$1.inputs.tmp.$$"
    mv -f "$out_dir/.$1.inputs.tmp.$$" "$out_dir/.$1.inputs"
}

wit_hash="$(hash_files $(find wit -type f | LC_ALL=C sort))"

# Python: a venv with the pinned requirements; prints the venv's directory.
python_tools() { # requirements.txt
    local req="$1" dir py
    py="$(command -v python3 || true)"
    [[ -n "$py" ]] || { echo "build.sh: python3 (3.10+) is needed to build $req's app" >&2; exit 1; }
    dir="$target_dir/plugin-tools/py-$(hash_files "$req" | cut -c1-16)"
    if [[ ! -f "$dir/.installed" ]]; then
        echo "build.sh: installing the Python toolchain pinned in $req into $dir" >&2
        rm -rf "$dir"
        mkdir -p "$(dirname "$dir")"
        if ! "$py" -m venv "$dir" >&2; then
            echo "build.sh: '$py -m venv' failed: install Python's venv module (Debian: apt-get install python3-venv)" >&2
            exit 1
        fi
        if ! "$dir/bin/python" -m pip install --quiet --disable-pip-version-check \
            --no-input -r "$req" >&2; then
            echo "build.sh: pip could not install $req (is PyPI reachable?)" >&2
            exit 1
        fi
        touch "$dir/.installed"
    fi
    printf '%s\n' "$dir"
}

# JavaScript: node_modules exactly as package-lock.json says.
js_tools() { # plugin dir
    local dir="$1" lock_hash
    command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 \
        || { echo "build.sh: node (18+) and npm are needed to build $dir" >&2; exit 1; }
    [[ -f "$dir/package-lock.json" ]] \
        || { echo "build.sh: $dir/package-lock.json is missing: run 'npm install' there and commit it" >&2; exit 1; }
    lock_hash="$(hash_files "$dir/package.json" "$dir/package-lock.json")"
    if [[ ! -f "$dir/node_modules/.stasis-installed" \
        || "$(cat "$dir/node_modules/.stasis-installed")" != "$lock_hash" ]]; then
        echo "build.sh: installing the JavaScript toolchain pinned in $dir/package-lock.json" >&2
        if ! (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >&2); then
            echo "build.sh: 'npm ci' failed in $dir (is the npm registry reachable?)" >&2
            exit 1
        fi
        printf '%s\n' "$lock_hash" >"$dir/node_modules/.stasis-installed"
    fi
}

for dir in plugins/*/; do
    dir="${dir%/}"
    name="$(basename "$dir")"
    [[ -f "$dir/Cargo.toml" ]] && continue
    if [[ -f "$dir/requirements.txt" ]]; then
        [[ -f "$dir/app.py" ]] || { echo "build.sh: $dir: requirements.txt but no app.py" >&2; exit 1; }
        venv="$(python_tools "$dir/requirements.txt")"
        cmd=(componentize-py -d wit -w app componentize -p "$dir" app)
        inputs="$( { echo "${cmd[*]}"; echo "$wit_hash";
                    (cd "$dir" && hash_files $(plugin_inputs .)); } | sha256sum | cut -c1-64)"
        if ! fresh "$name" "$inputs"; then
            echo "build.sh: $name: componentize-py (about 10 s)" >&2
            tmp="$out_dir/$name.wasm.tmp.$$"
            "$venv/bin/${cmd[0]}" "${cmd[@]:1}" -o "$tmp" >&2 \
                || { rm -f "$tmp"; echo "build.sh: $name: componentize-py failed" >&2; exit 1; }
            install_component "$name" "$tmp" "$inputs"
        fi
    elif [[ -f "$dir/package.json" ]]; then
        [[ -f "$dir/app.js" ]] || { echo "build.sh: $dir: package.json but no app.js" >&2; exit 1; }
        js_tools "$dir"
        # No wasi:http (the host links only WASI cli/io/clocks/random/filesystem).
        cmd=(componentize-js app.js -w "$root/wit" -n app -d http fetch-event)
        inputs="$( { echo "${cmd[*]}"; echo "$wit_hash"
                    (cd "$dir" && hash_files $(plugin_inputs .)); } | sha256sum | cut -c1-64)"
        if ! fresh "$name" "$inputs"; then
            echo "build.sh: $name: componentize-js (about 10 s)" >&2
            tmp="$out_dir/$name.wasm.tmp.$$"
            (cd "$dir" && node_modules/.bin/"${cmd[0]}" "${cmd[@]:1}" -o "$tmp" >&2) \
                || { rm -f "$tmp"; echo "build.sh: $name: componentize-js failed" >&2; exit 1; }
            install_component "$name" "$tmp" "$inputs"
        fi
    else
        continue
    fi
    printf '%-12s %7d bytes  %s\n' "$name" "$(wc -c <"$out_dir/$name.wasm")" "$out_dir/$name.wasm"
done
