#!/bin/sh
# Builds the filter component ({{ident}}.wasm) with componentize-js and says how to upload
# it. `npm ci` installs the pinned componentize-js first when node_modules is missing.
# WEIR_COMPONENTIZE_JS=/path/to/componentize-js/src/cli.js reuses an installed one instead.
set -eu
cd "$(dirname "$0")"
tool="${WEIR_COMPONENTIZE_JS:-node_modules/@bytecodealliance/componentize-js/src/cli.js}"
if [ -z "${WEIR_COMPONENTIZE_JS:-}" ] && [ ! -f "$tool" ]; then
  npm ci --no-audit --no-fund
fi
# Every WASI feature off: the broker refuses components importing clocks, random or files.
node "$tool" filter.js --wit wit --world-name message-filter \
  --disable stdio random clocks http fetch-event --out {{ident}}.wasm
wasm={{ident}}.wasm
echo "built $wasm"
echo "try it:   echo '{\"properties\": {\"region\": \"eu\"}}' | weir filter test $wasm --memory 64MiB --param property=region --param value=eu"
echo "upload:   weir --namesrv HOST:9876 filter upload --group GROUP --topic TOPIC $wasm --memory 64MiB --param property=region --param value=eu"
