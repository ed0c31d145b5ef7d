#!/usr/bin/env bash
# Offline checks of the deployment files: the compose stack, the Prometheus
# and Alertmanager configuration, the alert rules and their tests, and the
# Kubernetes manifests. Needs no container engine and no cluster: images are
# not built and nothing is started (README, "Production stack").
#
#   ./scripts/check-deploy.sh
#
# Installs what it lacks: promtool, amtool, docker-compose (Debian packages
# prometheus, prometheus-alertmanager, docker-compose) and kubernetes-validate
# (PyPI). Renders the kustomizations with `kubectl kustomize` or `kustomize
# build`, or without either with scripts/check-deploy.py's renderer (base only).
set -euo pipefail
cd "$(dirname "$0")/.."

K8S_VERSION=1.30.0 # the Kubernetes version the manifests are validated against
HELPER=scripts/check-deploy.py
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

step() { printf '\n== %s\n' "$*"; }

# ------------------------------------------------------------------ tools
missing=()
command -v promtool >/dev/null || missing+=(prometheus)
command -v amtool >/dev/null || missing+=(prometheus-alertmanager)
command -v docker-compose >/dev/null || missing+=(docker-compose)
if ((${#missing[@]})); then
  step "installing ${missing[*]} (apt)"
  sudo=""
  [[ $(id -u) -eq 0 ]] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! command -v kubernetes-validate >/dev/null; then
  step "installing kubernetes-validate (pip)"
  python3 -m pip install --quiet 'kubernetes-validate==1.37.0'
  hash -r
fi
python3 -c 'import yaml' # PyYAML comes with kubernetes-validate

step "tools"
promtool --version 2>&1 | head -n1
amtool --version 2>&1 | head -n1
docker-compose version --short
echo "kubernetes-validate $(kubernetes-validate --version)"

# ------------------------------------------------------------------ compose
step "docker-compose.yml"
docker-compose -f docker-compose.yml config -q
echo "  ok docker-compose config -q"
env -u POSTGRES_PASSWORD -u GRAFANA_ADMIN_USER -u GRAFANA_ADMIN_PASSWORD -u ORDERFLOW_GIT_SHA \
  docker-compose -f docker-compose.yml config -q
echo "  ok docker-compose config -q with POSTGRES_PASSWORD, GRAFANA_ADMIN_*, ORDERFLOW_GIT_SHA unset"
env -u POSTGRES_PASSWORD docker-compose -f docker-compose.yml config >"$WORK/compose.yml"
python3 "$HELPER" compose "$WORK/compose.yml"
python3 "$HELPER" env-names "$WORK/compose.yml"
for f in $(grep -oE '\./deploy/[^:]+' docker-compose.yml | sort -u); do
  [[ -e $f ]] || { echo "FAIL docker-compose.yml mounts $f, which does not exist"; exit 1; }
done
echo "  ok every file the compose stack mounts exists"
# The Dockerfile copies every workspace member (cargo reads their manifests).
members=$(python3 -c 'import tomllib; print(" ".join(m for m in tomllib.load(open("Cargo.toml","rb"))["workspace"]["members"] if m != "."))')
for m in $members; do
  grep -qE "^COPY $m \./$m\$" Dockerfile || { echo "FAIL Dockerfile does not COPY workspace member $m"; exit 1; }
  ! grep -qxE "/?$m/?" .dockerignore || { echo "FAIL .dockerignore excludes workspace member $m"; exit 1; }
done
echo "  ok Dockerfile copies the workspace members ($members); .dockerignore keeps them"

# ------------------------------------------------------------------ prometheus
step "Prometheus"
# prometheus.yml names the rule file by its path in the container; check it
# with the path pointed at the repository's file.
sed "s#/etc/prometheus/alerts.yml#$PWD/deploy/prometheus/alerts.yml#" \
  deploy/prometheus/prometheus.yml >"$WORK/prometheus.yml"
promtool check config "$WORK/prometheus.yml"
promtool check rules deploy/prometheus/alerts.yml
(cd deploy/prometheus && promtool test rules alerts.test.yml)

# ------------------------------------------------------------------ alertmanager
step "Alertmanager"
amtool check-config deploy/alertmanager/alertmanager.yml
route() { # RECEIVER LABEL=VALUE...: the alert must be routed to RECEIVER
  local want=$1 out
  shift
  out=$(amtool config routes test --config.file=deploy/alertmanager/alertmanager.yml \
    --verify.receivers="$want" "$@" 2>&1) || { echo "$out"; echo "FAIL $* is not routed to $want"; return 1; }
}
route page severity=critical alertname=OrderflowConsumerDown
route warnings severity=warning alertname=OrderflowConsumerLagGrowing
echo "  ok routes: severity=critical -> page, severity=warning -> warnings"

# ------------------------------------------------------------------ kubernetes
render() { # DIR -> stdout
  if command -v kubectl >/dev/null; then
    kubectl kustomize "$1"
  elif command -v kustomize >/dev/null; then
    kustomize build "$1"
  else
    python3 "$HELPER" render "$1"
  fi
}
validate() { # FILE: every document against the Kubernetes $K8S_VERSION schemas
  local out
  out=$(kubernetes-validate --strict -k "$K8S_VERSION" "$1") || { echo "$out"; return 1; }
  echo "$out" | sed 's/^/  /'
  # No schema: only the ServiceMonitor (a CRD), which check-deploy.py checks.
  if echo "$out" | grep '^WARN' | grep -v 'kind ServiceMonitor with api version monitoring.coreos.com/v1'; then
    echo "FAIL kubernetes-validate has no schema for the documents above"
    return 1
  fi
}

step "Kubernetes base (deploy/kubernetes/base), against Kubernetes $K8S_VERSION"
if command -v kubectl >/dev/null; then
  echo "  rendered with kubectl kustomize ($(kubectl version --client 2>/dev/null | grep -i kustomize || true))"
elif command -v kustomize >/dev/null; then
  echo "  rendered with kustomize build"
else
  echo "  rendered with check-deploy.py render (no kubectl or kustomize here)"
fi
render deploy/kubernetes/base >"$WORK/base.yaml"
validate "$WORK/base.yaml"
# The base expects the Secret orderflow-secrets to be created beside it.
python3 "$HELPER" kubernetes "$WORK/base.yaml" orderflow-secrets
python3 "$HELPER" env-names "$WORK/base.yaml" deploy/kubernetes/overlays/example/secrets.env.example

step "Kubernetes overlay (deploy/kubernetes/overlays/example), with secrets.env.example as secrets.env"
if command -v kubectl >/dev/null || command -v kustomize >/dev/null; then
  cp -r deploy/kubernetes "$WORK/kubernetes"
  cp deploy/kubernetes/overlays/example/secrets.env.example "$WORK/kubernetes/overlays/example/secrets.env"
  render "$WORK/kubernetes/overlays/example" >"$WORK/overlay.yaml"
  validate "$WORK/overlay.yaml"
  python3 "$HELPER" kubernetes "$WORK/overlay.yaml"
else
  echo "  skipped: the overlay's secretGenerator needs kubectl or kustomize"
fi

printf '\nAll deployment checks passed (nothing was built or started: no container engine, no cluster).\n'
