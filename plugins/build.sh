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
