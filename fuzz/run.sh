#!/usr/bin/env bash
# Runs every cargo-fuzz target (or the ones named) for SECONDS each, then prints per
# target the executions and whether it crashed. Exits non-zero if any target crashed.
#
#   fuzz/run.sh SECONDS [TARGET...]
#
# cargo-fuzz needs a nightly toolchain: installed here if missing, like cargo-fuzz itself.
# Corpora grow in fuzz/corpus/<target> (kept between runs, not in git); crashing inputs
# land in fuzz/artifacts/<target>; each run's log is fuzz/target/logs/<target>.log.
set -uo pipefail

secs=${1:?usage: fuzz/run.sh SECONDS [TARGET...]}
shift
cd "$(dirname "$0")"

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    rustup toolchain install nightly --profile minimal
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    cargo +nightly install cargo-fuzz --locked
fi

if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
cargo +nightly fuzz build || exit 2

mkdir -p target/logs
failed=0
summary=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    stamp=$(mktemp)
    extra=()
    [ -f "$t.dict" ] && extra+=("-dict=$t.dict")
    log="target/logs/$t.log"
    echo "== $t: ${secs}s"
    # -timeout: an input taking over 10 s is a hang; -rss_limit_mb: an OOM.
    cargo +nightly fuzz run "$t" "corpus/$t" -- -max_total_time="$secs" -timeout=10 \
        -rss_limit_mb=2048 -print_final_stats=1 "${extra[@]}" >"$log" 2>&1
    rc=$?
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | tail -1 | awk '{print $2}')
    rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | tail -1 | awk '{print $2}')
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | awk '{print $2}')
    new=$(find "artifacts/$t" -type f -newer "$stamp" | head -1)
    rm -f "$stamp"
    if [ "$rc" -ne 0 ] || [ -n "$new" ]; then
        failed=1
        what=$(grep -m1 -oE 'ERROR: libFuzzer: [a-z-]+|panicked at [^ ]+' "$log" || echo "exit $rc")
        summary+=("$t: ${execs:-?} execs (${rate:-?}/s, cov ${cov:-?}) FOUND: $what ${new:-}")
    else
        summary+=("$t: ${execs:-?} execs (${rate:-?}/s, cov ${cov:-?}) no crash")
    fi
    echo "${summary[-1]}"
done

# store_open's folders, left behind where an input crashed.
rm -rf /dev/shm/weir-fuzz-store-* "${TMPDIR:-/tmp}"/weir-fuzz-store-*

echo
echo "== summary (${secs}s per target)"
printf '%s\n' "${summary[@]}"
exit "$failed"
