#!/usr/bin/env bash
# kind end-to-end (`make e2e`): a real cluster, the real images, the chart, a Prometheus, and
# two rollouts: a good v2 must be promoted, a bad v3 rolled back.
# Runs only where Docker, kind, kubectl and helm are present; elsewhere it prints one line
# saying why and exits 0 without claiming a pass. Set KEEP_CLUSTER=1 to keep the cluster.
# Everything it exercises is also covered by tests that run without a cluster
# (tests/unit/test_helm_chart.py, test_manifests*.py, test_alerts.py, the operator's tests).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
cluster=${CLUSTER_NAME:-mlrollout-e2e}
tag=$(sed -n 's/^appVersion: "\(.*\)"$/\1/p' "$root/helm/mlrollout/Chart.yaml")
operator_image=ghcr.io/mlrollout/operator:$tag
serving_image=ghcr.io/mlrollout/serving:$tag   # the CRD's default spec.serving.image
python=${PYTHON:-$root/.venv/bin/python}

for tool in docker kind kubectl helm; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "e2e: NOT RUN: '$tool' is not installed (needs docker, kind, kubectl, helm)"; exit 0
  fi
done
if ! docker info >/dev/null 2>&1; then
  echo "e2e: NOT RUN: no Docker engine answers ('docker info' fails)"; exit 0
fi

work=$(mktemp -d)
cleanup() {
  status=$?
  if [ "$status" -ne 0 ]; then
    echo "e2e: FAILED; diagnostics follow" >&2
    kubectl -n ml get modeldeployment fraud -o yaml >&2 || true
    kubectl -n ml get pods -o wide >&2 || true
    kubectl -n mlrollout-system logs deploy/mlrollout-operator --tail=200 >&2 || true
  fi
  [ "${KEEP_CLUSTER:-0}" = 1 ] || kind delete cluster --name "$cluster" >/dev/null 2>&1 || true
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT

step() { echo "e2e: $*"; }

# wait_for DESCRIPTION SECONDS COMMAND...: poll until COMMAND succeeds, bounded in time.
wait_for() {
  local what=$1 limit=$2; shift 2
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then echo "e2e: timed out after ${limit}s waiting for $what" >&2; return 1; fi
    sleep 5
  done
}
md_field() { kubectl -n ml get modeldeployment fraud -o "jsonpath=$1"; }
phase_is() { [ "$(md_field '{.status.phase}')" = "$1" ]; }
stable_is() { [ "$(md_field '{.status.stable.version}')" = "$1" ] && phase_is Healthy; }
rejected() { md_field '{.status.rejectedRevisions[*].version}' | grep -qw "$1"; }
apply_version() { sed "s/VERSION/$1/g" "$here/modeldeployment.yaml" | kubectl apply -f -; }

step "creating kind cluster $cluster"
kind create cluster --name "$cluster" --wait 180s

step "building and loading images ($tag)"
docker build -q -f "$root/images/operator.Dockerfile" -t "$operator_image" "$root"
docker build -q -f "$root/images/serving.Dockerfile" -t "$serving_image" "$root"
kind load docker-image --name "$cluster" "$operator_image" "$serving_image"

step "example models, model store, load generator and Prometheus"
"$python" -m mlrollout.services.cli examples "$work/models" --tar >/dev/null
for ns in ml monitoring; do
  kubectl create namespace "$ns" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
done
kubectl -n ml create configmap model-store \
  --from-file="$work/models/v1.tar.gz" --from-file="$work/models/v2.tar.gz" \
  --from-file="$work/models/v3.tar.gz"
kubectl -n ml create configmap traffic --from-file="$work/models/traffic.jsonl"
kubectl -n monitoring create configmap prometheus-alerts \
  --from-file=alerts.yaml="$root/helm/mlrollout/files/alerts.yaml"
kubectl apply -f "$here/cluster.yaml"
kubectl -n monitoring rollout status deploy/prometheus --timeout=180s
kubectl -n ml rollout status deploy/model-store --timeout=120s

step "installing the chart"
helm install mlrollout "$root/helm/mlrollout" --namespace mlrollout-system --create-namespace \
  --set operator.image.pullPolicy=Never \
  --set operator.prometheusUrl=http://prometheus.monitoring.svc:9090 \
  --set-string 'operator.podAnnotations.prometheus\.io/scrape=true' \
  --set-string 'operator.podAnnotations.prometheus\.io/port=8000' \
  --wait --timeout 180s

step "v1: first deployment must become Healthy"
apply_version v1
wait_for "v1 Healthy" 300 stable_is v1

step "v2 (good): must walk the steps and be promoted"
apply_version v2
wait_for "v2 promoted" 900 stable_is v2

step "v3 (bad): must be rolled back, v2 stays stable"
apply_version v3
wait_for "v3 rolled back" 900 rejected v3
stable=$(md_field '{.status.stable.version}')
[ "$stable" = v2 ] || { echo "e2e: after the rollback the stable version is '$stable', not v2" >&2; exit 1; }

step "PASS: v2 promoted, v3 rolled back on a kind cluster"
