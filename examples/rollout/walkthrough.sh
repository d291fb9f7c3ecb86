#!/usr/bin/env bash
# Two ramped rollouts against the fake metrics API, with --now so each run is a moment of the release:
#   ship:      1 % -> 5 -> 25 -> 50 -> 100 %: shipped
#   rollback:  1 % -> 5 %, where errors triple: rolled back to control
# Usage: examples/rollout/walkthrough.sh ship|rollback WORKDIR   (needs `guardrail` and python3 on PATH)
set -euo pipefail
scenario=${1:?ship or rollback}
work=${2:?a work directory}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$work"
cp "$here/flags.yaml" "$work/flags.yaml"
cd "$work"

python3 -m guardrail.fakeapi --port-file url.txt >fakeapi.log 2>&1 &
fake=$!
trap 'kill $fake' EXIT
while [ ! -s url.txt ]; do sleep 0.1; done
export METRICS_API_URL=$(cat url.txt) ALERT_WEBHOOK_URL=$(cat url.txt)/webhook

# What the metrics API would answer for the current step: units of each arm and their error rate.
# (Your metrics API answers this for real; guardrail queries it since the step's start.)
step_metrics() {  # step_metrics TREATMENT_PERCENT TREATMENT_ERROR_RATE [UNITS]
  local units=${3:-400000} t=$(( ${3:-400000} * $1 / 100 )) c
  c=$(( units - t ))
  for m in "control error_rate 0.01 $c" "treatment error_rate $2 $t" \
           "control exposures $c $c" "treatment exposures $t $t"; do
    set -- $m
    curl -fsS -X POST "$METRICS_API_URL/_control/metrics" -d "{\"flag\": \"checkout.payments.new-flow\",
      \"variant\": \"$1\", \"metric\": \"$2\", \"value\": $3, \"count\": $4}" >/dev/null
  done
}
check() {  # check TIME
  echo "\$ guardrail check --flags flags.yaml --now $1"
  guardrail check --flags flags.yaml --state state.json --audit audit.jsonl --now "$1" | sed -n '/^RAMP\|^  \|^HALTED\|^HELD/p' || true
}

check 2026-12-01T09:00:00Z                      # first run: writes step 1 (1 %)
step_metrics 1 0.01
check 2026-12-01T09:20:00Z                      # holds: 10 min left on step 1
check 2026-12-01T09:31:00Z                      # advances to 5 %
if [ "$scenario" = rollback ]; then
  step_metrics 5 0.03                           # the new flow fails 3 % of checkouts instead of 1 %
  check 2026-12-01T09:33:00Z                    # harm proven: 1 of 2 confirmations
  check 2026-12-01T09:35:00Z                    # confirmed: rolled back (share 0, DISABLED: control for everyone)
else
  step_metrics 5 0.01
  check 2026-12-01T10:02:00Z                    # advances to 25 %
  step_metrics 25 0.01
  check 2026-12-01T10:33:00Z                    # advances to 50 %
  step_metrics 50 0.01
  echo "\$ guardrail check --dry-run --flags flags.yaml --now 2026-12-01T11:04:00Z"
  guardrail check --dry-run --flags flags.yaml --state state.json --now 2026-12-01T11:04:00Z | sed -n '/^RAMP/,$p'
  check 2026-12-01T11:04:00Z                    # ships: 100 %, alert sent once, no longer watched
  check 2026-12-01T11:06:00Z
fi
if [ "$scenario" = rollback ]; then
  echo '$ grep -A3 fractional: flags.yaml    # the share is 0 too: switched back on by hand, it still serves control'
  grep -A3 'fractional:' flags.yaml
  last=2026-12-01T09:36:00Z
else
  last=2026-12-01T11:07:00Z
fi
echo "\$ guardrail status --flags flags.yaml --now $last"
guardrail status --flags flags.yaml --state state.json --now "$last" | sed -n '4,$p'
echo '# ramp and halt records of audit.jsonl:'
python3 -c 'import json,sys
for line in open("audit.jsonl"):
    r = json.loads(line)
    if r["type"] in ("ramp", "halt"):
        keys = ("type", "action", "status") + (("parts",) if r["type"] == "halt" else ("step", "to_step", "shares"))
        print({k: r.get(k) for k in keys})'
