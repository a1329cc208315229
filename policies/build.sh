#!/usr/bin/env bash
# Builds the policy packs into reproducible Wasm modules and records their digests.
#
#   ./build.sh          build every pack in packs/, copy packs/<name>/<name>.wasm beside its
#                       source and rewrite `sha256` in packs/<name>/pack.toml
#   ./build.sh --check  rebuild into a temporary target dir and exit 1, naming each pack, if a
#                       committed .wasm or a manifest digest differs from the rebuild
#
# Reproducibility rests on the pinned toolchain (rust-toolchain.toml), Cargo.lock (--locked), the
# release profile in Cargo.toml, and remapping the checkout and cargo-home paths below so that the
# modules do not depend on where they were built. After building, check-modules.mjs (if node is
# installed) checks each module's imports and exports and runs it on sample documents.
set -euo pipefail
cd "$(dirname "$0")"

check=false
case "${1:-}" in
    "") ;;
    --check) check=true ;;
    *) echo "usage: $0 [--check]" >&2; exit 64 ;;
esac

target=wasm32-unknown-unknown
if ! rustup target list --installed | grep -qx "$target"; then
    rustup target add "$target"
fi

if $check; then
    target_dir=$(mktemp -d)
    trap 'rm -rf "$target_dir"' EXIT
else
    target_dir=$PWD/target
fi

# Panic-location strings carry source paths; keep the build machine's paths out of the module.
# (`--config` arrays are appended to the rustflags in .cargo/config.toml.)
cargo_home=${CARGO_HOME:-$HOME/.cargo}
remap="target.$target.rustflags=[\"--remap-path-prefix=$PWD=/fleetforge/policies\", \"--remap-path-prefix=$cargo_home=/cargo\"]"

packs=()
for manifest in packs/*/pack.toml; do
    packs+=("$(basename "$(dirname "$manifest")")")
done

cargo build --quiet --locked --config "$remap" --release --target "$target" --target-dir "$target_dir" \
    $(printf -- '-p fleetforge-pack-%s ' "${packs[@]}")

failed=()
for name in "${packs[@]}"; do
    built=$target_dir/$target/release/fleetforge_pack_${name//-/_}.wasm
    module=packs/$name/$name.wasm
    manifest=packs/$name/pack.toml
    digest=$(sha256sum "$built" | cut -d' ' -f1)
    size=$(wc -c <"$built")
    if $check; then
        if ! cmp -s "$built" "$module"; then
            echo "$name: $module differs from the rebuild (sha256 $digest); run policies/build.sh" >&2
            failed+=("$name")
        elif ! grep -qx "sha256 = \"$digest\"" "$manifest"; then
            echo "$name: $manifest does not record sha256 $digest; run policies/build.sh" >&2
            failed+=("$name")
        else
            echo "$name: ok ($size bytes, sha256 $digest)"
        fi
    else
        cp "$built" "$module"
        sed -i "s/^sha256 = \".*\"\$/sha256 = \"$digest\"/" "$manifest"
        grep -qx "sha256 = \"$digest\"" "$manifest" || { echo "$name: $manifest has no sha256 line" >&2; exit 1; }
        echo "$name: $module ($size bytes, sha256 $digest)"
    fi
done

if ((${#failed[@]})); then
    echo "not reproducible: ${failed[*]}" >&2
    exit 1
fi

if command -v node >/dev/null; then
    node check-modules.mjs "${packs[@]}"
else
    echo "node not found; skipped check-modules.mjs (imports, exports, sample documents)" >&2
fi
