#!/usr/bin/env bash
# A two-node Ray cluster and an MLflow server on this machine (127.0.0.1 only), to try
# `nasplat submit` without a cloud:
#
#   bash cluster/local.sh up       # head (node_a + nasplat_driver) + worker (node_b) + mlflow server
#   bash cluster/local.sh status   # what runs, and the addresses
#   bash cluster/local.sh down     # stops exactly the processes `up` started (never `ray stop`)
#
# Every process is started in its own session (setsid); its pid, which is also its process-group
# id, goes to $STATE_DIR/pids. `down` signals those groups only, so other Ray instances on the
# machine are left alone. Token authentication is on: the token is $RAY_AUTH_TOKEN if set, else
# Ray's default ~/.ray/auth_token (created with `ray get-auth-token --generate` when missing);
# both nodes get it in their environment, and so do the jobs and workers they start.
#
# Settings (environment variables, defaults in brackets):
#   NASPLAT_LOCAL_DIR      state: pids, logs, MLflow store              [./.nasplat-local]
#   NASPLAT_RAY_TMP        Ray's temp dir (keep it short: socket paths)  [/tmp/nasplat-ray-$UID]
#                          the worker node uses ${NASPLAT_RAY_TMP}_b: nodes sharing one would delete
#                          each other's unpacked job working_dir when their own workers finish
#   NASPLAT_GCS_PORT       head GCS port                                 [6380]
#   NASPLAT_DASHBOARD_PORT Ray dashboard / Jobs API port                 [8265]
#   NASPLAT_MLFLOW_PORT    MLflow server port                            [5000]
#   NASPLAT_HEAD_CPUS, NASPLAT_WORKER_CPUS  logical CPUs per node        [1, 1]
#   NASPLAT_DRIVER_SLOTS   nasplat_driver slots on the head (trials at once) [1]
#   NASPLAT_MLFLOW=0       do not start the MLflow server
#   RAY, MLFLOW, PYTHON    the executables                               [ray, mlflow, python3]
set -euo pipefail

STATE_DIR=${NASPLAT_LOCAL_DIR:-$PWD/.nasplat-local}
RAY_TMP=${NASPLAT_RAY_TMP:-/tmp/nasplat-ray-$(id -u)}
GCS_PORT=${NASPLAT_GCS_PORT:-6380}
DASHBOARD_PORT=${NASPLAT_DASHBOARD_PORT:-8265}
MLFLOW_PORT=${NASPLAT_MLFLOW_PORT:-5000}
HEAD_CPUS=${NASPLAT_HEAD_CPUS:-1}
WORKER_CPUS=${NASPLAT_WORKER_CPUS:-1}
DRIVER_SLOTS=${NASPLAT_DRIVER_SLOTS:-1}
START_MLFLOW=${NASPLAT_MLFLOW:-1}
RAY=${RAY:-ray}
MLFLOW=${MLFLOW:-mlflow}
PYTHON=${PYTHON:-python3}
PIDS="$STATE_DIR/pids"

free_port() {
  "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_http URL SECONDS: until the URL answers at all (any HTTP status)
wait_http() {
  "$PYTHON" - "$1" "$2" <<'EOF'
import sys, time, urllib.error, urllib.request
url, deadline = sys.argv[1], time.time() + float(sys.argv[2])
while time.time() < deadline:
    try:
        urllib.request.urlopen(url, timeout=5)
        sys.exit(0)
    except urllib.error.HTTPError:
        sys.exit(0)
    except OSError:
        time.sleep(1)
sys.exit(f"local.sh: {url} did not answer in {sys.argv[2]} s")
EOF
}

# wait_nodes N SECONDS: until the dashboard lists N alive nodes (sends the token)
wait_nodes() {
  "$PYTHON" - "http://127.0.0.1:$DASHBOARD_PORT/nodes?view=summary" "$1" "$2" <<'EOF'
import json, os, sys, time, urllib.request
url, want, deadline = sys.argv[1], int(sys.argv[2]), time.time() + float(sys.argv[3])
request = urllib.request.Request(url, headers={"Authorization": "Bearer " + os.environ["RAY_AUTH_TOKEN"]})
alive = 0
while time.time() < deadline:
    try:
        summary = json.load(urllib.request.urlopen(request, timeout=5))["data"]["summary"]
        alive = sum(1 for node in summary if node.get("raylet", {}).get("state") == "ALIVE")
        if alive >= want:
            sys.exit(0)
    except (OSError, KeyError, ValueError):
        pass
    time.sleep(1)
sys.exit(f"local.sh: {alive} of {want} Ray nodes alive after {sys.argv[3]} s")
EOF
}

# start NAME LOGFILE COMMAND...: run COMMAND in a new session, record "NAME PID"
start() {
  local name=$1 log=$2
  shift 2
  setsid "$@" >"$log" 2>&1 </dev/null &
  echo "$name $!" >>"$PIDS"
}

alive() { kill -0 "$1" 2>/dev/null; }

# ours PGID: the process group still runs something this script started (guards against reused pids)
ours() {
  local members
  members=$(ps -eo pgid=,args= | awk -v g="$1" '$1 == g')
  grep -q -e 'ray start' -e 'ray/' -e 'ray::' -e 'mlflow' <<<"$members"
}

down() {
  [[ -f $PIDS ]] || { echo "local.sh: nothing to stop ($PIDS not found)"; return 0; }
  local name pid
  # reverse order: mlflow, worker node, head
  while read -r name pid; do
    if ours "$pid"; then
      kill -TERM -- "-$pid" 2>/dev/null || true
    else
      echo "local.sh: $name (process group $pid) is not running"
    fi
  done < <(tac "$PIDS")
  for _ in $(seq 1 15); do
    local left=0
    while read -r name pid; do
      if ours "$pid"; then left=1; fi
    done <"$PIDS"
    [[ $left == 0 ]] && break
    sleep 1
  done
  while read -r name pid; do
    if ours "$pid"; then
      echo "local.sh: $name (process group $pid) did not stop in 15 s; killing it"
      kill -KILL -- "-$pid" 2>/dev/null || true
      for _ in $(seq 1 10); do ours "$pid" || break; sleep 1; done
    fi
  done <"$PIDS"
  rm -f "$PIDS"
  echo "local.sh: stopped"
}

up() {
  mkdir -p "$STATE_DIR" "$RAY_TMP" "${RAY_TMP}_b"
  if [[ -f $PIDS ]]; then
    echo "local.sh: $PIDS exists: the cluster is up (or run 'down' first)" >&2
    exit 1
  fi
  if [[ -z ${RAY_AUTH_TOKEN:-} ]]; then
    [[ -s $HOME/.ray/auth_token ]] || "$RAY" get-auth-token --generate >/dev/null
    RAY_AUTH_TOKEN=$(cat "$HOME/.ray/auth_token")
  fi
  # RAY_ADDRESS: Ray's helpers inside jobs (e.g. Train's placement-group cleaner) look for "the" local
  # cluster and fail when the machine runs several; this names ours.
  export RAY_AUTH_MODE=token RAY_AUTH_TOKEN RAY_ADDRESS="127.0.0.1:$GCS_PORT"
  trap 'echo "local.sh: start-up failed; stopping what was started (logs in $STATE_DIR)" >&2; down' ERR

  start head "$STATE_DIR/ray-head.log" "$RAY" start --head --block --disable-usage-stats \
    --node-ip-address 127.0.0.1 --port "$GCS_PORT" \
    --dashboard-host 127.0.0.1 --dashboard-port "$DASHBOARD_PORT" \
    --ray-client-server-port "$(free_port)" --dashboard-agent-listen-port "$(free_port)" \
    --dashboard-agent-grpc-port "$(free_port)" --metrics-export-port "$(free_port)" \
    --runtime-env-agent-port "$(free_port)" \
    --num-cpus "$HEAD_CPUS" --num-gpus 0 --temp-dir "$RAY_TMP" \
    --resources "{\"node_a\": 1, \"nasplat_driver\": $DRIVER_SLOTS}"
  wait_http "http://127.0.0.1:$DASHBOARD_PORT/api/version" 120
  wait_nodes 1 120

  start worker "$STATE_DIR/ray-worker.log" "$RAY" start --block --disable-usage-stats \
    --address "127.0.0.1:$GCS_PORT" --node-ip-address 127.0.0.1 \
    --dashboard-agent-listen-port "$(free_port)" --dashboard-agent-grpc-port "$(free_port)" \
    --metrics-export-port "$(free_port)" --runtime-env-agent-port "$(free_port)" \
    --num-cpus "$WORKER_CPUS" --num-gpus 0 --resources '{"node_b": 1}' --temp-dir "${RAY_TMP}_b"
  wait_nodes 2 120

  if [[ $START_MLFLOW == 1 ]]; then
    start mlflow "$STATE_DIR/mlflow.log" env MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false "$MLFLOW" server --host 127.0.0.1 --port "$MLFLOW_PORT" \
      --backend-store-uri "sqlite:///$STATE_DIR/mlflow.db" --artifacts-destination "$STATE_DIR/mlartifacts"
    wait_http "http://127.0.0.1:$MLFLOW_PORT/health" 180
  fi
  trap - ERR
  status
}

status() {
  if [[ ! -f $PIDS ]]; then
    echo "local.sh: not running"
    return 0
  fi
  local name pid
  while read -r name pid; do
    if alive "$pid"; then echo "$name: pid $pid running"; else echo "$name: pid $pid NOT running"; fi
  done <"$PIDS"
  echo "Ray dashboard / Jobs API: http://127.0.0.1:$DASHBOARD_PORT   (GCS 127.0.0.1:$GCS_PORT)"
  [[ $START_MLFLOW == 1 ]] && echo "MLflow:                   http://127.0.0.1:$MLFLOW_PORT"
  echo "submit:  nasplat submit --address http://127.0.0.1:$DASHBOARD_PORT --tracking-uri http://127.0.0.1:$MLFLOW_PORT --follow -- search --epochs 2"
}

case ${1:-} in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: bash cluster/local.sh up|down|status" >&2; exit 2 ;;
esac
