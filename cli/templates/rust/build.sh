#!/bin/sh
# Builds the filter component and says how to upload it. One command does the build:
#   cargo build --release --target wasm32-wasip2
set -eu
cd "$(dirname "$0")"
cargo build --release --target wasm32-wasip2
wasm="${CARGO_TARGET_DIR:-target}/wasm32-wasip2/release/{{ident}}.wasm"
echo "built $wasm"
echo "try it:   echo '{\"properties\": {\"region\": \"eu\"}}' | weir filter test $wasm --param property=region --param value=eu"
echo "upload:   weir --namesrv HOST:9876 filter upload --group GROUP --topic TOPIC $wasm --param property=region --param value=eu"
