# shellcheck shell=bash
# Sourced by bench/run.sh and bench/proxy-cmd.sh: `example_packs DIR HOST` writes the four example
# Wasm packs, configured for upstream HOST, under DIR (a manifest with the module's digest each)
# and prints one `--policy DIR/NAME` pair per line of output.
example_packs() { # dir host
  local dir=$1 host=$2 root
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  mk_pack() { # name config
    mkdir -p "$dir/$1"
    cp "$root/policies/packs/$1/$1.wasm" "$dir/$1/"
    printf 'name = "%s"\nversion = "bench"\nkind = "wasm"\nmodule = "%s.wasm"\nsha256 = "%s"\n%s\n' "$1" "$1" \
      "$(sha256sum "$dir/$1/$1.wasm" | cut -d' ' -f1)" "$2" >"$dir/$1/pack.toml"
    printf -- '--policy\n%s\n' "$dir/$1"
  }
  mk_pack allowlist "$(printf '[config]\nhosts = ["%s"]\nmodels = ["gpt-4o*"]' "$host")"
  mk_pack model-limits $'[config]\ndefault_max_tokens = 4096\n[config.models."gpt-4o*"]\nmax_tokens = 1024'
  mk_pack mcp-tools $'[config]\ndeny_tools = ["delete_*", "shell_exec"]'
  mk_pack info-flow $'[config]\nsecret_reading_tools = ["read_secret"]\noutbound_hosts = ["pastebin.com"]'
}
