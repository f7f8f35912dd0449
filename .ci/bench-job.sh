#!/usr/bin/env bash
# CI check: the streaming benchmark runs as a real Ray job on a fresh head node.
#
# Starts a 2-CPU head node with the dashboard (its job server takes `ray job
# submit`), submits `python -m actors.bench --quick`, checks the job SUCCEEDED
# and that its JSON report has sane numbers, then stops that head node.
# The node runs in the foreground of a background `ray start --block` and is
# stopped by signalling that process: `ray stop` would kill every Ray process
# of this user on the machine, including clusters this script did not start.
# Every port is picked free, so the check can run beside other Ray clusters.
#
#   .ci/bench-job.sh            # --quick: tiny models, 1 session, 11 s of media
#   BENCH_NAME=lite4 BENCH_ARGS="--config lite --sessions 4" .ci/bench-job.sh   # any actors.bench arguments
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
VENV="${VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
RAY="$VENV/bin/ray"
[ -x "$RAY" ] || { echo "bench-job: $RAY not found; run 'make setup' first" >&2; exit 2; }

export PATH="$VENV/bin:$PATH"   # the job's `python` is the venv's
export RAY_AUTH_MODE=token      # Ray 2.60 token auth: `ray start` writes the token under ~/.ray, the client sends it
export HF_HUB_OFFLINE=1
export RAY_USAGE_STATS_ENABLED=0
unset RAY_ADDRESS

OUT_DIR="${BENCH_OUT_DIR:-$ROOT/runs/bench}"
mkdir -p "$OUT_DIR"
BENCH_NAME="${BENCH_NAME:-bench_quick}"
BENCH_ARGS="${BENCH_ARGS:---quick}"
REPORT="$OUT_DIR/$BENCH_NAME.json"
rm -f "$REPORT"
read -r GCS_PORT DASH_PORT CLIENT_PORT AGENT_PORT < <("$PY" - <<'EOF'
import socket
socks = [socket.socket() for _ in range(4)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
for s in socks:
    s.close()
EOF
)
DASHBOARD="http://127.0.0.1:$DASH_PORT"
HEAD_LOG="$OUT_DIR/$BENCH_NAME.ray_head.log"
start=$(date +%s)

"$RAY" start --head --block --num-cpus 2 --include-dashboard true \
  --port "$GCS_PORT" --dashboard-host 127.0.0.1 --dashboard-port "$DASH_PORT" \
  --ray-client-server-port "$CLIENT_PORT" --dashboard-agent-listen-port "$AGENT_PORT" \
  --disable-usage-stats >"$HEAD_LOG" 2>&1 &
HEAD_PID=$!

stop_head() {
  if kill -0 "$HEAD_PID" 2>/dev/null; then
    kill -TERM "$HEAD_PID" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$HEAD_PID" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$HEAD_PID" 2>/dev/null && { echo "bench-job: head node did not stop; killing it" >&2; kill -KILL "$HEAD_PID"; }
  fi
  wait "$HEAD_PID" 2>/dev/null || true
}
trap stop_head EXIT

# The job server answers once the dashboard is up.
for i in $(seq 1 120); do
  if "$RAY" job list --address "$DASHBOARD" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$HEAD_PID" 2>/dev/null; then
    echo "bench-job: ray start failed:" >&2; tail -n 30 "$HEAD_LOG" >&2; exit 1
  fi
  [ "$i" -eq 120 ] && { echo "bench-job: the job server at $DASHBOARD never answered" >&2; tail -n 30 "$HEAD_LOG" >&2; exit 1; }
  sleep 1
done
echo "bench-job: head node up at $DASHBOARD after $(( $(date +%s) - start )) s"

# Upload only the source: the venv, runs, caches and git history stay here (.gitignore'd paths are skipped too).
RUNTIME_ENV='{"excludes": [".git", ".venv", "runs", ".cache", ".whl", ".gl", "out", "**/__pycache__", "*.egg-info", ".pytest_cache"], "env_vars": {"HF_HUB_OFFLINE": "1"}}'
SUBMISSION="$BENCH_NAME-$(date +%s)-$$"
set +e
# shellcheck disable=SC2086
timeout "${BENCH_TIMEOUT:-900}" "$RAY" job submit --address "$DASHBOARD" --submission-id "$SUBMISSION" --working-dir . \
  --runtime-env-json "$RUNTIME_ENV" -- python -m actors.bench $BENCH_ARGS --out "$REPORT"
SUBMIT_RC=$?
set -e
STATUS=$("$PY" -c 'import sys
from ray.job_submission import JobSubmissionClient
print(JobSubmissionClient(sys.argv[1]).get_job_status(sys.argv[2]).value)' "$DASHBOARD" "$SUBMISSION" 2>&1 | tail -n 1)
echo "bench-job: job $SUBMISSION status ${STATUS:-unknown} (submit exit $SUBMIT_RC)"
if [ "$SUBMIT_RC" -ne 0 ] || [ "$STATUS" != "SUCCEEDED" ]; then
  echo "bench-job: the benchmark job did not succeed" >&2
  exit 1
fi

"$PY" - "$REPORT" <<'EOF'
import json, sys
path = sys.argv[1]
try:
    r = json.load(open(path))
except (OSError, ValueError) as exc:
    sys.exit(f"bench-job: no readable report at {path}: {exc}")
problems = []
if r.get("utterances", 0) < 1:
    problems.append(f"utterances {r.get('utterances')} (expected >= 1)")
if r.get("failed") != 0 or r.get("sessions_failed") != 0:
    problems.append(f"failed {r.get('failed')}, sessions_failed {r.get('sessions_failed')}: {r.get('session_errors')}")
e2e = r.get("e2e_ms", {})
if not all(isinstance(e2e.get(k), (int, float)) and 0 < e2e[k] < 60000 for k in ("p50", "p95", "p99", "max")):
    problems.append(f"e2e_ms not in (0, 60000) ms: {e2e}")
elif not e2e["p50"] <= e2e["p95"] <= e2e["p99"] <= e2e["max"]:
    problems.append(f"e2e_ms percentiles out of order: {e2e}")
if not {"asr", "fusion"} <= set(r.get("stages_ms", {})):
    problems.append(f"stages_ms lacks asr/fusion: {sorted(r.get('stages_ms', {}))}")
rss = r.get("peak_rss_mb", {})
if not (rss.get("actor_processes", 0) >= 1 and rss.get("total_mb", 0) > rss.get("driver_mb", 0) > 0):
    problems.append(f"peak_rss_mb implausible: {rss}")
cpu = r.get("cpu_s_during_replay", {})
if not ("driver" in cpu and any(k.startswith("asr#") for k in cpu)
        and all(v is None or v >= 0 for v in cpu.values()) and (cpu.get("driver") or 0) > 0):
    problems.append(f"cpu_s_during_replay lacks the driver or the ASR actor: {cpu}")
if not r.get("machine", {}).get("cpu_count"):
    problems.append("machine.cpu_count missing")
if problems:
    sys.exit("bench-job: report check failed:\n  " + "\n  ".join(problems))
print(f"bench-job: OK: {r['utterances']} utterances, e2e p50 {e2e['p50']} ms p95 {e2e['p95']} ms, "
      f"peak RSS {rss['total_mb']} MB, report {path}")
EOF
echo "bench-job: done in $(( $(date +%s) - start )) s"
