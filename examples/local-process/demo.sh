#!/usr/bin/env bash
# From prefect.yaml to a finished flow run, on the embedded file store (.buildsys/state.db):
# validate, build (cached), plan, apply, start a worker, run the deployment and show its logs.
set -euo pipefail
cd "$(dirname "$0")"
BUILDSYS="${BUILDSYS:-buildsys}"
export BUILDSYS_STATE="${BUILDSYS_STATE:-.buildsys/state.db}"

if [ -t 1 ] && [ -z "${NO_COLOR:-}" ]; then bold=$'\033[1m' plain=$'\033[0m'; else bold='' plain=''; fi
say() { printf '\n%s$ buildsys %s%s\n' "$bold" "$*" "$plain"; }
step() { say "$@"; "$BUILDSYS" "$@"; }

step validate
step build --explain
step plan
step apply --auto-approve

say worker start --pool local-demo "&"
"$BUILDSYS" worker start --pool local-demo &
worker=$!
trap 'kill -INT "$worker" 2>/dev/null || true; wait "$worker" 2>/dev/null || true' EXIT

step run hello --wait --logs
