#!/usr/bin/env bash
# Fuzzes the decoders that read what the network sends:
#   page-server   the native page server's protocol parser (native/page_server.cc), with libFuzzer
#                 (clang, ASan, UBSan); a crash leaves crash-* in .cache/fuzz/
#   frames        the control-frame decoder (src/protocol/frames.ts), mutation fuzzer in JS
#   batches       the page-batch decoder (src/transport/page-batch.ts, batch-stream.ts), same
# usage: scripts/fuzz.sh [SECONDS per target, default 600] [TARGET...]
# Runs niced: it keeps a core busy. Every crash found becomes a regression
# test (test/fuzz-regressions.test.ts; native inputs in native/fuzz/regressions/).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-600}
shift || true
targets=("${@:-page-server frames batches}")
read -r -a targets <<<"${targets[*]}"
out=.cache/fuzz   # not build/: node-gyp rebuild empties it
mkdir -p "$out"

build_page_server() {
  command -v clang++ >/dev/null || { echo "fuzz: clang++ missing (bash scripts/setup.sh installs it)" >&2; exit 3; }
  local f=(-g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined)
  local napi; napi=$(node -p "require('node-addon-api').include_dir")
  local nodeinc; nodeinc=$(dirname "$(dirname "$(readlink -f "$(command -v node)")")")/include/node
  clang++ -std=c++17 "${f[@]}" -DNAPI_VERSION=8 -DNAPI_CPP_EXCEPTIONS -Inative -I"$napi" -I"$nodeinc" \
    -c native/fuzz/page_server_fuzz.cc -o "$out/page_server_fuzz.o"
  # The harness never calls into Node: the N-API symbols the addon's glue
  # references get stubs that abort, so the parser links as a plain program.
  nm -u "$out/page_server_fuzz.o" | awk '$2 ~ /^(napi_|node_)/ {print "void " $2 "(void) { abort(); }"}' \
    | { echo '#include <stdlib.h>'; cat; } >"$out/napi_stubs.c"
  clang "${f[@]}" -c "$out/napi_stubs.c" -o "$out/napi_stubs.o"
  clang++ "${f[@]}" "$out/page_server_fuzz.o" "$out/napi_stubs.o" -o "$out/page_server_fuzz" -lpthread
}

for t in "${targets[@]}"; do
  case "$t" in
    page-server)
      build_page_server
      mkdir -p "$out/corpus-page-server"
      PHAUL_FUZZ_SCRATCH=$(mktemp -d /dev/shm/phaul-fuzz-ps-XXXXXX)
      export PHAUL_FUZZ_SCRATCH
      trap 'rm -rf "$PHAUL_FUZZ_SCRATCH"' EXIT
      # Regressions first: each must pass before new fuzzing starts.
      if compgen -G "native/fuzz/regressions/*" >/dev/null; then
        "$out/page_server_fuzz" -timeout=10 native/fuzz/regressions/* >"$out/regressions.log" 2>&1 \
          || { tail -30 "$out/regressions.log" >&2; echo "fuzz: a page-server regression input fails" >&2; exit 1; }
      fi
      echo "fuzz: page-server for ${secs} s" >&2
      nice -n 19 "$out/page_server_fuzz" -max_len=20000 -timeout=10 -rss_limit_mb=1024 -max_total_time="$secs" \
        -print_final_stats=1 -artifact_prefix="$out/" "$out/corpus-page-server" native/fuzz/seeds-page-server \
        >"$out/page-server.log" 2>&1 || { tail -40 "$out/page-server.log" >&2; exit 1; }
      grep -E "^stat::number_of_executed_units|^Done" "$out/page-server.log" >&2 || true
      ;;
    frames|batches)
      echo "fuzz: $t for ${secs} s" >&2
      nice -n 19 node dist/test/fuzz/fuzz-decoders.js "$t" "$secs" "$out"
      ;;
    *) echo "fuzz: unknown target $t (page-server, frames, batches)" >&2; exit 2 ;;
  esac
done
