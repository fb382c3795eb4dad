#!/bin/sh
# Builds the filter component ({{ident}}.wasm) with componentize-py and says how to upload
# it. The pinned componentize-py (requirements.txt) is installed into .venv first when
# missing. WEIR_COMPONENTIZE_PY=/path/to/bin/componentize-py reuses an installed one.
set -eu
cd "$(dirname "$0")"
tool="${WEIR_COMPONENTIZE_PY:-.venv/bin/componentize-py}"
if [ -z "${WEIR_COMPONENTIZE_PY:-}" ] && [ ! -x "$tool" ]; then
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
fi
# --stub-wasi: the broker refuses components importing clocks, random or files.
"$tool" -d wit -w message-filter componentize --stub-wasi -p . filter -o {{ident}}.wasm
wasm={{ident}}.wasm
echo "built $wasm"
echo "try it:   echo '{\"properties\": {\"region\": \"eu\"}}' | weir filter test $wasm --memory 64MiB --param property=region --param value=eu"
echo "upload:   weir --namesrv HOST:9876 filter upload --group GROUP --topic TOPIC $wasm --memory 64MiB --param property=region --param value=eu"
