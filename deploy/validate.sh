#!/usr/bin/env bash
# Renders every overlay with kustomize and validates the output:
#  1. `kubectl kustomize` must render it;
#  2. every built-in kind passes `kubernetes-validate --strict` (bundled
#     OpenAPI schemas, offline) for the oldest and newest Kubernetes we
#     support;
#  3. CRD kinds (RabbitmqCluster, ServiceMonitor, PrometheusRule, KEDA's
#     ScaledObject and TriggerAuthentication) have no
#     schema in kubernetes-validate, which only WARNs on a missing schema
#     and passes. So they are filtered out of step 2 and validated with
#     python jsonschema against deploy/schemas/*.json (every object we use
#     is closed: a misspelled nested field fails), and any OTHER kind
#     without a schema fails: a typo in a kind or apiVersion cannot pass as
#     "unknown". Each PrometheusRule's groups are written out as a rule file
#     and checked by `promtool check rules` (Debian's prometheus package):
#     a broken PromQL expression fails;
#  4. Bulwark's own invariants, read from the rendered ConfigMaps' TOML:
#     one ConfigMap per binary (sharder, worker, relay), mounted by its own
#     workload, [amqp] and [redis] equal in all three; sharder replicas ==
#     BULWARK_SHARDER__PROCESS_COUNT (kustomize replacement) and no
#     process_count in the TOML;
#     PROCESS_INDEX from the pod-index label; Guaranteed QoS, a shipped
#     PriorityClass and node + zone topology spread for the sharder; DNS
#     egress to kube-dns pods, one autoscaler per workload and a worker
#     ScaledObject within the partition count on the partition queues, NodeLocal DNSCache and a ClusterIP /32;
#     container and Service port http == http_listen's (relay: listen's)
#     port; metrics_listen set, and container and Service port metrics,
#     prometheus.io/port and the ServiceMonitor's endpoints ==
#     metrics_listen's port;
#     NetworkPolicy ingress names its sources (no rule without `from`, no
#     peer `namespaceSelector: {}` without a podSelector, no ipBlock /0),
#     the sharder's, worker's and relay's restrict Ingress, name existing
#     container ports and open the metrics port; the worker's and relay's
#     restrict Egress and reach no /0 (no internet);
#     worker.read_api "token" off loopback => BULWARK_WORKER__READ_TOKEN
#     from a required secretKeyRef (production: read_api must be "token");
#     the relay reads what the workers write: relay.amqp_topology_base ==
#     worker.amqp_topology_base, worker.store "redis", worker.publish_events
#     on, and its discord.intents == the sharder's; its token, AMQP and
#     Redis URLs from required secretKeyRefs, a PDB, ClientIP affinity on
#     its Service with several replicas, and a ws:// relay.public_url
#     naming that Service in the rendered namespace on its http port;
#     every [tls] *_file on a mounted volume (production: every binary sets
#     tls.ca_file, its directory is Secret bulwark-ca, required, read-only);
#     terminationGracePeriodSeconds > preStop + sharder.shutdown_grace
#     (relay: preStop + 10 s),
#     no Secret rendered, secrets only by secretKeyRef (none in the TOML),
#     hardened securityContext, resources, probes on /readyz and /healthz,
#     ndots 1.
#  5. every metric name in grafana/bulwark-dashboard.json's PromQL and in the
#     production alert rules is emitted by the Rust sources (sharder/src,
#     worker/src, relay/src, dnscache/src, protocol/src); every alert has a
#     runbook section.
# Usage: deploy/validate.sh [overlay...]   (default: every overlay)
#        deploy/validate.sh --self-test    (broken copies must fail, see below)
set -euo pipefail
cd "$(dirname "$0")"

# Oldest supported (pod-index label needs 1.28; preStop sleep is on by
# default from 1.30) and the newest schemas the tool bundles.
K8S_VERSIONS=(1.31.0 1.37.0)
# The crates whose sources emit the metrics the dashboard and alerts use.
METRIC_SOURCES=(sharder worker relay dnscache protocol)

if ! command -v kubectl >/dev/null 2>&1; then
  echo "FATAL: kubectl not found; install kubectl (1.27+, with built-in kustomize) to render deploy/" >&2
  exit 1
fi
python3 -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null \
  || { echo "FATAL: python3 3.11+ is needed (tomllib)" >&2; exit 1; }
# Run as a module of the same python3 that installs it (no PATH or shim
# rehash needed).
kv() { python3 -m kubernetes_validate "$@"; }
if ! python3 -c 'import kubernetes_validate' >/dev/null 2>&1; then
  echo "kubernetes-validate missing: installing it with pip"
  python3 -m pip install --quiet --disable-pip-version-check "kubernetes-validate==1.37.0" \
    || { echo "FATAL: cannot pip install kubernetes-validate" >&2; exit 1; }
fi
# Its first call on a fresh machine must not be the one that fails.
kv --version >/dev/null

# promtool: on PATH (Debian's prometheus package), or $PROMTOOL, or the
# copy .ci/run unpacks from that package without installing the daemon.
PROMTOOL=${PROMTOOL:-$(command -v promtool || true)}
if [ -z "$PROMTOOL" ] && [ -x "$HOME/.cache/bulwark-promtool/usr/bin/promtool" ]; then
  PROMTOOL="$HOME/.cache/bulwark-promtool/usr/bin/promtool"
fi
if [ -z "$PROMTOOL" ]; then
  echo "FATAL: promtool not found; apt-get install prometheus (Debian), or run .ci/run, or set PROMTOOL" >&2
  exit 1
fi
python3 -c 'import jsonschema' 2>/dev/null || {
  echo "jsonschema missing: installing it with pip"
  python3 -m pip install --quiet --disable-pip-version-check "jsonschema==4.26.0" \
    || { echo "FATAL: cannot pip install jsonschema" >&2; exit 1; }
}

# --self-test: the checks must catch what they exist for. Copies deploy/
# and docs/ into a temp dir, breaks one thing per copy, and requires
# validate.sh to fail on each with a message naming the problem; the
# unbroken copy must pass.
if [ "${1:-}" = "--self-test" ]; then
  root=$(cd .. && pwd)
  st=$(mktemp -d)
  trap 'rm -rf "$st"' EXIT
  copy() {
    mkdir -p "$st/$1"
    cp -r "$root/deploy" "$root/docs" "$st/$1/"
    for d in "${METRIC_SOURCES[@]}"; do ln -s "$root/$d" "$st/$1/$d"; done
  }
  expect() { # name, expected exit (0/1), message that must appear
    local out rc=0
    out=$(bash "$st/$1/deploy/validate.sh" production 2>&1) || rc=$?
    if [ "$2" = 0 ] && [ "$rc" = 0 ]; then
      echo "self-test $1: passes, as it must"
    elif [ "$2" = 1 ] && [ "$rc" != 0 ] && grep -qF -- "$3" <<<"$out"; then
      echo "self-test $1: fails, as it must:"
      grep -F -- "$3" <<<"$out" | head -3 | sed 's/^/    /'
    else
      echo "SELF-TEST FAILED: $1: exit $rc, expected $2 with '$3'; output:" >&2
      echo "$out" >&2
      exit 1
    fi
  }
  copy unbroken
  expect unbroken 0 ""
  # A PromQL expression with an unclosed parenthesis: the YAML is fine and
  # the metric names are real, only promtool sees it.
  copy broken-promql
  python3 - "$st/broken-promql/deploy/overlays/production/prometheusrule.yaml" <<'PY'
import sys
p = sys.argv[1]
s = open(p).read()
old = 'expr: sum by (pod) (sharder_shard_state{state="stopped"}) > 0'
assert old in s, "self-test: the rule to break is gone; update validate.sh --self-test"
open(p, "w").write(s.replace(old, 'expr: sum by (pod) (sharder_shard_state{state="stopped"} > 0'))
PY
  expect broken-promql 1 "parse error: unclosed left parenthesis"
  # A misspelled nested field of the RabbitmqCluster: the API server would
  # prune it silently and the broker would run without its memory alarm.
  copy misspelled-rabbitmq
  python3 - "$st/misspelled-rabbitmq/deploy/overlays/production/rabbitmq.yaml" <<'PY'
import sys
p = sys.argv[1]
s = open(p).read()
assert "    additionalConfig: |" in s, "self-test: the field to misspell is gone; update validate.sh --self-test"
open(p, "w").write(s.replace("    additionalConfig: |", "    additonalConfig: |"))
PY
  expect misspelled-rabbitmq 1 "'additonalConfig' was unexpected"
  # A misspelled field of the KEDA ScaledObject: KEDA would ignore it and
  # scale with its defaults (1..100 replicas).
  copy misspelled-scaledobject
  python3 - "$st/misspelled-scaledobject/deploy/overlays/production/worker-scaledobject.yaml" <<'PY'
import sys
p = sys.argv[1]
s = open(p).read()
assert "  maxReplicaCount: 8" in s, "self-test: the field to misspell is gone; update validate.sh --self-test"
open(p, "w").write(s.replace("  maxReplicaCount: 8", "  maxReplicasCount: 8"))
PY
  expect misspelled-scaledobject 1 "'maxReplicasCount' was unexpected"
  # The CPU HPA left in place next to the ScaledObject.
  copy two-autoscalers
  python3 - "$st/two-autoscalers/deploy/overlays/production/kustomization.yaml" <<'PY'
import sys
p = sys.argv[1]
s = open(p).read()
assert "  - path: worker-hpa-delete.yaml\n" in s, "self-test: the HPA deletion is gone; update validate.sh --self-test"
open(p, "w").write(s.replace("  - path: worker-hpa-delete.yaml\n", ""))
PY
  expect two-autoscalers 1 "both scale worker"
  # The security review's finding (issue #24): an ingress peer that admits
  # every namespace to the worker's read API.
  copy open-networkpolicy
  python3 - "$st/open-networkpolicy/deploy/base/worker-networkpolicy.yaml" <<'PY'
import sys
p = sys.argv[1]
s = open(p).read()
old = '        - podSelector:\n            matchLabels:\n              bulwark.dev/cache-reader: "true"\n'
assert old in s, "self-test: the cache-reader peer is gone; update validate.sh --self-test"
open(p, "w").write(s.replace(old, "        - namespaceSelector: {}\n"))
PY
  expect open-networkpolicy 1 "admits every namespace"
  # Production's read API left open.
  copy open-read-api
  python3 - "$st/open-read-api/deploy/overlays/production/worker.toml" <<'PY'
import sys
p = sys.argv[1]
s = open(p).read()
assert 'read_api = "token"' in s, "self-test: read_api is gone; update validate.sh --self-test"
open(p, "w").write(s.replace('read_api = "token"', 'read_api = "open"'))
PY
  expect open-read-api 1 "worker.read_api is 'open'"
  # The read token made optional: a Secret without read-token would start
  # workers that then refuse to run, instead of waiting for the key.
  copy optional-read-token
  python3 - "$st/optional-read-token/deploy/base/worker-deployment.yaml" <<'PY'
import sys
p = sys.argv[1]
s = open(p).read()
old = "key: read-token\n                  optional: false"
assert old in s, "self-test: the read-token secretKeyRef is gone; update validate.sh --self-test"
open(p, "w").write(s.replace(old, "key: read-token\n                  optional: true"))
PY
  expect optional-read-token 1 "BULWARK_WORKER__READ_TOKEN's secretKeyRef"
  # tls.ca_file set but the CA Secret not mounted: the binaries would fail
  # to connect to the broker and Redis.
  copy no-ca-mount
  python3 - "$st/no-ca-mount/deploy/overlays/production/kustomization.yaml" <<'PY'
import sys
p = sys.argv[1]
s = open(p).read()
assert "  - path: tls-ca.yaml\n" in s, "self-test: the CA mount patch is gone; update validate.sh --self-test"
open(p, "w").write(s.replace("  - path: tls-ca.yaml\n", ""))
PY
  expect no-ca-mount 1 "tls.ca_file /etc/bulwark/tls/ca.crt: no volume"
  # metrics_listen moved without the manifests: Prometheus would scrape a
  # closed port.
  copy metrics-port-drift
  python3 - "$st/metrics-port-drift/deploy/overlays/production/sharder.toml" <<'PY'
import sys
p = sys.argv[1]
s = open(p).read()
assert 'metrics_listen = "0.0.0.0:9090"' in s, "self-test: metrics_listen is gone; update validate.sh --self-test"
open(p, "w").write(s.replace('metrics_listen = "0.0.0.0:9090"', 'metrics_listen = "0.0.0.0:9095"'))
PY
  expect metrics-port-drift 1 "sharder.metrics_listen port 9095"
  # The ServiceMonitor left on the http port: the NetworkPolicy refuses
  # Prometheus there (and /admin is there).
  copy servicemonitor-http
  python3 - "$st/servicemonitor-http/deploy/overlays/production/servicemonitor.yaml" <<'PY'
import sys
p = sys.argv[1]
s = open(p).read()
assert "    - port: metrics\n" in s, "self-test: the ServiceMonitor port is gone; update validate.sh --self-test"
open(p, "w").write(s.replace("    - port: metrics\n", "    - port: http\n"))
PY
  expect servicemonitor-http 1 "not its metrics port"
  # The relay on another output exchange than the workers publish to: it
  # would be Ready (it consumes) and its bots would get no events.
  copy relay-topology-drift
  python3 - "$st/relay-topology-drift/deploy/overlays/production/relay.toml" <<'PY'
import sys
p = sys.argv[1]
s = open(p).read()
old = 'amqp_topology_base = "bulwark.gateway"'
assert old in s, "self-test: relay.amqp_topology_base is gone; update validate.sh --self-test"
open(p, "w").write(s.replace(old, 'amqp_topology_base = "bulwark.staging"'))
PY
  expect relay-topology-drift 1 "relay.amqp_topology_base 'bulwark.staging' is not the worker's"
  # The relay's intents with a privileged bit the shards do not have
  # (MESSAGE_CONTENT): bots would be admitted to content that never comes.
  copy relay-intents-drift
  python3 - "$st/relay-intents-drift/deploy/overlays/production/relay.toml" <<'PY'
import sys
p = sys.argv[1]
s = open(p).read()
assert "intents" not in s.replace("discord.intents", ""), "self-test: relay.toml sets intents now; update validate.sh --self-test"
if "[discord]\n" in s:
    s = s.replace("[discord]\n", "[discord]\nintents = 33295\n")
else:
    s += "\n[discord]\nintents = 33295\n"
open(p, "w").write(s)
PY
  expect relay-intents-drift 1 "the relay's discord.intents 33295 is not the sharder's"
  # The relay reading other Redis keys than the workers write: empty READY.
  copy relay-redis-drift
  python3 - "$st/relay-redis-drift/deploy/overlays/production/relay.toml" <<'PY'
import sys
p = sys.argv[1]
s = open(p).read()
assert 'key_prefix = "bulwark"\n' in s, "self-test: the relay's key_prefix is gone; update validate.sh --self-test"
open(p, "w").write(s.replace('key_prefix = "bulwark"\n', 'key_prefix = "bulwark-relay"\n'))
PY
  expect relay-redis-drift 1 "[redis] differs between the relay's and the worker's"
  # Workers back on the in-memory store: nothing in Redis for the relay.
  copy relay-memory-store
  python3 - "$st/relay-memory-store/deploy/overlays/production/worker.toml" <<'PY'
import sys
p = sys.argv[1]
s = open(p).read()
assert 'store = "redis"' in s, "self-test: worker.store is gone; update validate.sh --self-test"
open(p, "w").write(s.replace('store = "redis"', 'store = "memory"'))
PY
  expect relay-memory-store 1 "relay: worker.store is 'memory'"
  # Dev's public_url copied into production: bots would be sent to the
  # dev namespace's relay.
  copy relay-public-url
  python3 - "$st/relay-public-url/deploy/overlays/production/relay.toml" <<'PY'
import sys
p = sys.argv[1]
s = open(p).read()
old = 'public_url = "ws://relay.bulwark.svc.cluster.local:8082"'
assert old in s, "self-test: relay.public_url is gone; update validate.sh --self-test"
open(p, "w").write(s.replace(old, 'public_url = "ws://relay.bulwark-dev.svc.cluster.local:8082"'))
PY
  expect relay-public-url 1 "not the Service relay in namespace bulwark"
  # No session affinity: a RESUME lands on a random relay pod (op 9).
  copy relay-no-affinity
  python3 - "$st/relay-no-affinity/deploy/base/relay-service.yaml" <<'PY'
import sys
p = sys.argv[1]
s = open(p).read()
old = "  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n    clientIP:\n      timeoutSeconds: 10800\n"
assert old in s, "self-test: the relay's session affinity is gone; update validate.sh --self-test"
open(p, "w").write(s.replace(old, ""))
PY
  expect relay-no-affinity 1 "Service relay: sessionAffinity None with 2 relay replicas"
  # The CA mounted in the sharder and worker but not the relay.
  copy relay-no-ca-mount
  python3 - "$st/relay-no-ca-mount/deploy/overlays/production/tls-ca.yaml" <<'PY'
import sys
p = sys.argv[1]
s = open(p).read()
docs = s.split("\n---\n")
keep = [d for d in docs if "  name: relay\n" not in d]
assert len(keep) == len(docs) - 1, "self-test: the relay's CA mount is gone; update validate.sh --self-test"
open(p, "w").write("\n---\n".join(keep) + "\n")
PY
  expect relay-no-ca-mount 1 "relay: tls.ca_file /etc/bulwark/tls/ca.crt: no volume"
  # relay.metrics_listen moved without the manifests.
  copy relay-metrics-port-drift
  python3 - "$st/relay-metrics-port-drift/deploy/overlays/production/relay.toml" <<'PY'
import sys
p = sys.argv[1]
s = open(p).read()
assert 'metrics_listen = "0.0.0.0:9092"' in s, "self-test: relay.metrics_listen is gone; update validate.sh --self-test"
open(p, "w").write(s.replace('metrics_listen = "0.0.0.0:9092"', 'metrics_listen = "0.0.0.0:9093"'))
PY
  expect relay-metrics-port-drift 1 "relay.metrics_listen port 9093"
  # The relay given the sharder's way to the internet: with the bot token
  # it could then talk to Discord (or anything else).
  copy relay-internet-egress
  python3 - "$st/relay-internet-egress/deploy/base/relay-networkpolicy.yaml" <<'PY'
import sys
p = sys.argv[1]
s = open(p).read()
assert s.endswith("        - port: 6380\n          protocol: TCP\n"), "self-test: the relay's last egress rule moved; update validate.sh --self-test"
s += ("    - to:\n        - ipBlock:\n            cidr: 0.0.0.0/0\n"
      "      ports:\n        - port: 443\n          protocol: TCP\n")
open(p, "w").write(s)
PY
  expect relay-internet-egress 1 "NetworkPolicy relay: egress rule 4 reaches every address"
  echo "deploy/validate.sh --self-test: ok"
  exit 0
fi

overlays=("$@")
if [ ${#overlays[@]} -eq 0 ]; then
  for d in overlays/*/; do overlays+=("$(basename "$d")"); done
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failed=0
for o in "${overlays[@]}"; do
  echo "--- overlay $o"
  if ! kubectl kustomize "overlays/$o" >"$tmp/$o.yaml" 2>"$tmp/$o.err"; then
    echo "FAIL: kubectl kustomize overlays/$o" >&2
    cat "$tmp/$o.err" >&2
    failed=1
    continue
  fi
  # Steps 3 and 4; writes the built-in kinds to $tmp/$o.builtin.yaml.
  if ! python3 - "$tmp/$o.yaml" "$tmp/$o.builtin.yaml" "$tmp/$o" "$o" <<'PY'
import posixpath, re, sys, tomllib, yaml

src, out, rules_prefix, overlay = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
# The production overlay carries extra duties: TLS to the broker and Redis,
# and a token on the worker's read API.
PRODUCTION = overlay == "production"
docs = [d for d in yaml.safe_load_all(open(src)) if d]
errors = []
def err(msg): errors.append(msg)

# CRDs kubernetes-validate has no schema for: each is checked against the
# JSON Schema in deploy/schemas/ (closed objects: a misspelled field fails,
# where the API server would silently prune it), then by our own rules.
import json, jsonschema
CRDS = {
    "RabbitmqCluster": "schemas/rabbitmqcluster.json",
    "ServiceMonitor": "schemas/servicemonitor.json",
    "PrometheusRule": "schemas/prometheusrule.json",
    "ScaledObject": "schemas/scaledobject.json",
    "TriggerAuthentication": "schemas/triggerauthentication.json",
}
DURATION = re.compile(r"^(\d+(ms|s|m|h))+$")
builtin = []
scaled = []
monitors = []
rule_files = 0
for d in docs:
    kind, api = d.get("kind"), d.get("apiVersion")
    name = (d.get("metadata") or {}).get("name")
    if not name:
        err(f"{kind} without metadata.name")
    if kind in CRDS:
        schema = json.load(open(CRDS[kind]))
        v = jsonschema.Draft202012Validator(schema)
        bad = sorted(v.iter_errors(d), key=lambda e: list(e.absolute_path))
        for e in bad:
            path = ".".join(str(p) for p in e.absolute_path) or "(top)"
            err(f"{kind}/{name}: schema {CRDS[kind]}: at {path}: {e.message}")
        if bad:
            continue
        spec = d.get("spec") or {}
        if kind == "RabbitmqCluster":
            r = spec.get("replicas")
            if not isinstance(r, int) or r < 1 or r % 2 == 0:
                err(f"{kind}/{name}: spec.replicas must be an odd integer (quorum), got {r!r}")
        if kind == "PrometheusRule":
            groups = spec.get("groups") or []
            if not groups:
                err(f"{kind}/{name}: spec.groups is empty")
            seen = set()
            for g in groups:
                rules = g.get("rules") or []
                if not g.get("name") or not rules:
                    err(f"{kind}/{name}: every group needs a name and rules")
                for r in rules:
                    a = r.get("alert")
                    if not a or not isinstance(r.get("expr"), str) or not r["expr"].strip():
                        err(f"{kind}/{name}: every rule needs alert and expr, got {r!r}")
                        continue
                    if a in seen:
                        err(f"{kind}/{name}: alert {a} defined twice")
                    seen.add(a)
                    if "for" in r and not DURATION.match(str(r["for"])):
                        err(f"{kind}/{name}: {a}: for {r['for']!r} is not a duration")
                    if (r.get("labels") or {}).get("severity") not in ("warning", "critical"):
                        err(f"{kind}/{name}: {a}: labels.severity must be warning or critical")
                    ann = r.get("annotations") or {}
                    if not ann.get("summary") or not str(ann.get("runbook", "")).startswith("docs/operations.md#"):
                        err(f"{kind}/{name}: {a}: needs annotations.summary and a runbook in docs/operations.md")
                    elif ann["runbook"].split("#", 1)[1] != a.lower():
                        err(f"{kind}/{name}: {a}: runbook anchor must be #{a.lower()}")
                    elif f"### {a}\n" not in open("../docs/operations.md").read():
                        err(f"{kind}/{name}: {a}: docs/operations.md has no '### {a}' section")
            # The rule file Prometheus would load, for `promtool check rules`.
            rule_files += 1
            with open(f"{rules_prefix}.{name}.rules.yaml", "w") as f:
                yaml.safe_dump({"groups": groups}, f, sort_keys=False)
        if kind == "ScaledObject":
            scaled.append(d)
        if kind == "ServiceMonitor":
            monitors.append(d)
            if not (spec.get("selector") or {}).get("matchLabels"):
                err(f"{kind}/{name}: spec.selector.matchLabels missing")
            eps = spec.get("endpoints")
            if not eps or not all(isinstance(e, dict) and e.get("port") for e in eps):
                err(f"{kind}/{name}: every spec.endpoints entry needs a named port")
        continue
    if kind == "Secret":
        err(f"Secret/{name} is rendered: secrets are never committed (see deploy/secret.example.yaml)")
    builtin.append(d)

by = {(d["kind"], d["metadata"]["name"]): d for d in docs}

def duration_s(text):
    """Seconds of a humantime duration such as "20s", "1m 30s", "500ms"."""
    units = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
    total = 0.0
    for num, unit in re.findall(r"(\d+)\s*([a-z]+)", text):
        if unit not in units:
            raise SystemExit(f"FAIL: cannot read duration {text!r}")
        total += int(num) * units[unit]
    return total

def listen(section, key, default):
    """A listen address of [sharder], [worker] or [relay] (each in its own file)."""
    return CFG[section].get(section, {}).get(key, default)

def addr_port(addr):
    return int(addr.rsplit(":", 1)[1])

def is_loopback(addr):
    host = addr.rsplit(":", 1)[0].strip("[]")
    return host == "localhost" or host == "::1" or host.startswith("127.")

# One config file per binary: bulwark-sharder-config for the sharder,
# bulwark-worker-config for the worker, bulwark-relay-config for the relay,
# so a worker-only change does not roll the sharders (or the relays). Each
# workload must mount its own.
def config_map(prefix):
    found = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith(prefix + "-")
             or d["kind"] == "ConfigMap" and d["metadata"]["name"] == prefix]
    if len(found) != 1:
        err(f"expected one {prefix} ConfigMap, found {len(found)}")
        return None, {}
    return found[0]["metadata"]["name"], tomllib.loads(found[0]["data"]["bulwark.toml"])
sharder_cm, cfg = config_map("bulwark-sharder-config")
worker_cm, wcfg = config_map("bulwark-worker-config")
relay_cm, rcfg = config_map("bulwark-relay-config")
CFG = {"sharder": cfg, "worker": wcfg, "relay": rcfg}
if [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("bulwark-config")]:
    err("a shared bulwark-config ConfigMap is rendered: each binary has its own (bulwark-sharder-config, "
        "bulwark-worker-config, bulwark-relay-config)")
for which, c in (("sharder", cfg), ("worker", wcfg), ("relay", rcfg)):
    for section, key in [("discord", "token"), ("amqp", "url"), ("redis", "url"), ("sharder", "admin_token"),
                         ("worker", "read_token")]:
        if key in c.get(section, {}):
            err(f"{which} bulwark.toml sets {section}.{key}: it is a secret, set it from the Secret")
# What both binaries read must agree: the partition count and queue layout
# ([amqp]) and the Redis keys ([redis]).
for section in ("amqp", "redis"):
    if cfg.get(section, {}) != wcfg.get(section, {}):
        err(f"[{section}] differs between the sharder's and the worker's bulwark.toml: "
            f"{cfg.get(section, {})} vs {wcfg.get(section, {})}; keep them equal")
# The relay reads what the workers write: the same broker layout and Redis
# keys ([amqp], [redis]), the workers' output exchange
# (relay.amqp_topology_base = worker.amqp_topology_base, both defaulting to
# bulwark.gateway), their Redis store (worker.store = "redis"), published
# (worker.publish_events, default on). It admits a bot's privileged intents
# only when discord.intents has them, so its discord.intents must be the
# sharder's (the default when unset: config/src/discord.rs).
TOPOLOGY_DEFAULT = "bulwark.gateway"
INTENTS_DEFAULT = 0b10_0000_1111
if relay_cm:
    for section in ("amqp", "redis"):
        if rcfg.get(section, {}) != wcfg.get(section, {}):
            err(f"[{section}] differs between the relay's and the worker's bulwark.toml: "
                f"{rcfg.get(section, {})} vs {wcfg.get(section, {})}; the relay reads what the workers write, keep them equal")
    rbase = rcfg.get("relay", {}).get("amqp_topology_base", TOPOLOGY_DEFAULT)
    wbase = wcfg.get("worker", {}).get("amqp_topology_base", TOPOLOGY_DEFAULT)
    if rbase != wbase:
        err(f"relay.amqp_topology_base {rbase!r} is not the worker's worker.amqp_topology_base {wbase!r}: "
            f"the relay would consume another output exchange and its bots get no events")
    rint = rcfg.get("discord", {}).get("intents", INTENTS_DEFAULT)
    sint = cfg.get("discord", {}).get("intents", INTENTS_DEFAULT)
    if rint != sint:
        err(f"the relay's discord.intents {rint} is not the sharder's discord.intents {sint}: the relay would "
            f"admit bots to privileged intents whose events the shards never receive, or refuse (4014) ones they do")
    wstore = wcfg.get("worker", {}).get("store", "memory")
    if wstore != "redis":
        err(f"relay: worker.store is {wstore!r}: the relay builds READY and GUILD_CREATE from the workers' Redis "
            f"store, set worker.store = \"redis\"")
    if wcfg.get("worker", {}).get("publish_events", True) is not True:
        err("relay: worker.publish_events is off: the workers publish nothing to the output exchange the relay consumes")
if "process_count" in cfg.get("sharder", {}):
    err("the sharder's bulwark.toml sets sharder.process_count: it comes from the StatefulSet's replicas "
        "(BULWARK_SHARDER__PROCESS_COUNT), the one place to edit")
for kind, wl_name, cm in (("StatefulSet", "sharder", sharder_cm), ("Deployment", "worker", worker_cm),
                          ("Deployment", "relay", relay_cm)):
    wl = next((d for d in docs if d["kind"] == kind and d["metadata"]["name"] == wl_name), None)
    if wl and cm:
        mounted = {(v.get("configMap") or {}).get("name") for v in wl["spec"]["template"]["spec"].get("volumes", [])}
        if cm not in mounted:
            err(f"{kind}/{wl_name} does not mount its own ConfigMap {cm} (mounts {sorted(x for x in mounted if x)})")

# Worker autoscaling on queue depth (KEDA): one autoscaler per workload
# (KEDA's own HPA and a second one would fight), replicas only help when the
# workers share the partitions (Redis store), never more replicas than
# partitions, and the trigger reads the partition queues.
for so in scaled:
    ref = so["spec"]["scaleTargetRef"]
    n = so["metadata"]["name"]
    target = (ref.get("kind", "Deployment"), ref["name"])
    if target not in by:
        err(f"ScaledObject/{n}: scaleTargetRef {target[0]}/{target[1]} is not rendered")
    hpas = [d["metadata"]["name"] for d in docs if d["kind"] == "HorizontalPodAutoscaler"
            and d["spec"]["scaleTargetRef"]["name"] == ref["name"]]
    if hpas:
        err(f"ScaledObject/{n} and HorizontalPodAutoscaler {hpas} both scale {ref['name']}: KEDA's HPA and another would fight")
    if ref["name"] == "worker":
        parts = wcfg.get("amqp", {}).get("partitions", 16)
        mx = so["spec"].get("maxReplicaCount", 100)
        if mx > parts:
            err(f"ScaledObject/{n}: maxReplicaCount {mx} > amqp.partitions {parts}: a replica beyond the partition count holds nothing")
        if so["spec"].get("minReplicaCount", 0) < 1:
            err(f"ScaledObject/{n}: minReplicaCount must be >= 1: the read API needs a worker")
        if wcfg.get("worker", {}).get("store") != "redis":
            err(f"ScaledObject/{n}: scaling workers needs worker.store = \"redis\" (shared partitions); without it added replicas are idle standbys")
        for t in so["spec"]["triggers"]:
            m = t["metadata"]
            if t["type"] != "rabbitmq":
                err(f"ScaledObject/{n}: trigger {t['type']}: the workers scale on RabbitMQ queue depth")
                continue
            if m.get("mode") != "QueueLength" or not m.get("value", "").isdigit():
                err(f"ScaledObject/{n}: rabbitmq trigger needs mode QueueLength and an integer value, got {m}")
            if m.get("useRegex") == "true":
                if m.get("protocol") != "http" or m.get("operation") not in ("sum", "max"):
                    err(f"ScaledObject/{n}: useRegex needs protocol http and operation sum or max, got {m}")
                pat = re.compile(m.get("queueName", ""))
                missing = [p for p in range(parts) if not pat.search(f"bulwark.gateway.p{p}")]
                if missing or pat.search("bulwark.gateway.dead"):
                    err(f"ScaledObject/{n}: queueName {m.get('queueName')!r} must match every partition queue "
                        f"(misses {missing[:4]}) and not the dead-letter queue")
            if not (t.get("authenticationRef") or {}).get("name") or \
                    ("TriggerAuthentication", t["authenticationRef"]["name"]) not in by:
                err(f"ScaledObject/{n}: rabbitmq trigger needs an authenticationRef to a rendered TriggerAuthentication (no host in the manifest: it holds a password)")

sts = by.get(("StatefulSet", "sharder"))
if not sts:
    err("no StatefulSet sharder")
else:
    replicas = sts["spec"].get("replicas", 1)
    c = sts["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in c.get("env", [])}
    pc = env.get("BULWARK_SHARDER__PROCESS_COUNT", {}).get("value")
    if pc != str(replicas):
        err(f"StatefulSet sharder has {replicas} replicas but BULWARK_SHARDER__PROCESS_COUNT (sharder.process_count) "
            f"is {pc!r}: the overlay's kustomization needs the replicas -> process_count replacement")
    # Guaranteed QoS: CPU throttling of a Burstable sharder stalls
    # heartbeats (false zombies), and it is evicted first under pressure.
    res = c.get("resources", {})
    for r in ("cpu", "memory"):
        rq, lim = res.get("requests", {}).get(r), res.get("limits", {}).get(r)
        if rq is None or str(rq) != str(lim):
            err(f"sharder: resources.requests.{r} ({rq}) must equal limits.{r} ({lim}): Guaranteed QoS")
    pod = sts["spec"]["template"]["spec"]
    pcname = pod.get("priorityClassName")
    if not pcname or ("PriorityClass", pcname) not in by:
        err(f"sharder: priorityClassName {pcname!r} must name a PriorityClass shipped in the manifests")
    keys = {t.get("topologyKey") for t in pod.get("topologySpreadConstraints", [])
            if (t.get("labelSelector") or {}).get("matchLabels", {}).get("app.kubernetes.io/name") == "sharder"}
    for k in ("kubernetes.io/hostname", "topology.kubernetes.io/zone"):
        if k not in keys:
            err(f"sharder: no topologySpreadConstraint on {k} selecting the sharder pods")
    sp = c.get("startupProbe") or {}
    budget = sp.get("periodSeconds", 10) * sp.get("failureThreshold", 3)
    if budget < 60:
        err(f"sharder: the startup probe allows {budget} s; allow at least 60 s for the process to start "
            f"(docs/operations.md, Probes)")
    idx = env.get("BULWARK_SHARDER__PROCESS_INDEX", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
    if idx != "metadata.labels['apps.kubernetes.io/pod-index']":
        err(f"sharder: BULWARK_SHARDER__PROCESS_INDEX must come from the pod-index label, got {idx!r}")
    spec = sts["spec"]["template"]["spec"]
    pre = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    grace = spec.get("terminationGracePeriodSeconds", 30)
    shutdown_bound = duration_s(cfg.get("sharder", {}).get("shutdown_grace", "20s"))
    if grace <= pre + shutdown_bound:
        err(f"sharder: terminationGracePeriodSeconds {grace} is not above preStop {pre} s + sharder.shutdown_grace {shutdown_bound} s")
    if sts["spec"].get("podManagementPolicy") != "Parallel":
        err("sharder: podManagementPolicy must be Parallel (see the comment in base)")
    store = cfg.get("sharder", {}).get("session_store", "file")
    if store == "file":
        mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
        claims = {t["metadata"]["name"] for t in sts["spec"].get("volumeClaimTemplates", [])}
        sdir = cfg["sharder"].get("session_dir", "sessions")
        if sdir not in mounts or not claims:
            err(f"sharder: file session store needs a volumeClaimTemplate mounted at session_dir {sdir}")
    elif store == "redis" and "BULWARK_REDIS__URL" not in env:
        err("sharder: redis session store but no BULWARK_REDIS__URL")
    if ("PodDisruptionBudget", "sharder") not in by:
        err("no PodDisruptionBudget sharder")
    svc = by.get(("Service", "sharder"))
    if not svc or svc["spec"].get("clusterIP") != "None":
        err("sharder: its Service must be headless")

for d in docs:
    if d["kind"] not in ("StatefulSet", "Deployment"):
        continue
    ref = f'{d["kind"]}/{d["metadata"]["name"]}'
    pod = d["spec"]["template"]["spec"]
    opts = {o["name"]: o.get("value") for o in (pod.get("dnsConfig") or {}).get("options", [])}
    if d["metadata"]["name"] in ("sharder", "worker", "relay") and opts.get("ndots") != "1":
        err(f"{ref}: dnsConfig ndots must be \"1\"")
    psc = pod.get("securityContext", {})
    if psc.get("runAsNonRoot") is not True or psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        err(f"{ref}: pod securityContext needs runAsNonRoot and seccomp RuntimeDefault")
    for c in pod.get("containers", []) + pod.get("initContainers", []):
        sc = c.get("securityContext", {})
        if not (sc.get("allowPrivilegeEscalation") is False and sc.get("readOnlyRootFilesystem") is True
                and sc.get("capabilities", {}).get("drop") == ["ALL"]):
            err(f"{ref}/{c['name']}: securityContext must drop ALL, be read-only and forbid privilege escalation")
        r = c.get("resources", {})
        if not r.get("requests") or not r.get("limits"):
            err(f"{ref}/{c['name']}: needs resource requests and limits")
        for e in c.get("env", []):
            if e["name"] in ("BULWARK_DISCORD__TOKEN", "BULWARK_AMQP__URL", "BULWARK_REDIS__URL",
                             "BULWARK_SHARDER__ADMIN_TOKEN", "BULWARK_WORKER__READ_TOKEN") \
                    and "secretKeyRef" not in e.get("valueFrom", {}):
                err(f"{ref}/{c['name']}: {e['name']} must come from a secretKeyRef")
        if d["metadata"]["name"] in ("sharder", "worker", "relay"):
            paths = {p: (c.get(p) or {}).get("httpGet", {}).get("path") for p in ("readinessProbe", "livenessProbe")}
            if paths != {"readinessProbe": "/readyz", "livenessProbe": "/healthz"}:
                err(f"{ref}: readiness must probe /readyz and liveness /healthz, got {paths}")

# The ports the binary binds are the ones the manifests use. http_listen
# (probes, /admin, the read API): container and Service port `http`.
# metrics_listen (/metrics only): container and Service port `metrics`,
# the prometheus.io/port annotations and the ServiceMonitor's endpoints.
# metrics_listen must be set: without it /metrics is served on http, which
# the NetworkPolicies do not open to Prometheus.
metrics_ports = {}   # workload -> (port name, port number) /metrics is on
for n, section, key, default, mdefault in (("sharder", "sharder", "http_listen", "0.0.0.0:8080", "0.0.0.0:9090"),
                                          ("worker", "worker", "http_listen", "0.0.0.0:8081", "0.0.0.0:9091"),
                                          ("relay", "relay", "listen", "0.0.0.0:8082", "0.0.0.0:9092")):
    port = addr_port(listen(section, key, default))
    maddr = listen(section, "metrics_listen", None)
    if not maddr:
        err(f"{n}: {section}.metrics_listen is not set: /metrics would be served on {key} ({port}), "
            f"which the NetworkPolicy does not open to Prometheus; set it (\"{mdefault}\")")
        mname, mport = "http", port
    else:
        mname, mport = "metrics", addr_port(maddr)
        if mport == port:
            err(f"{n}: {section}.metrics_listen port {mport} is also {key}'s")
    metrics_ports[n] = (mname, mport)
    wl = by.get(("StatefulSet", n)) or by.get(("Deployment", n))
    if wl:
        c = wl["spec"]["template"]["spec"]["containers"][0]
        cports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
        if cports.get("http") != port:
            err(f"{n}: containerPort http {cports.get('http')} but {section}.{key} port {port}")
        if maddr and cports.get("metrics") != mport:
            err(f"{n}: containerPort metrics {cports.get('metrics')} but {section}.metrics_listen port {mport}")
        ann = wl["spec"]["template"]["metadata"].get("annotations", {})
        if ann.get("prometheus.io/port") != str(mport):
            err(f"{n}: pod annotation prometheus.io/port {ann.get('prometheus.io/port')} but {section}.metrics_listen port {mport}")
    svc = by.get(("Service", n))
    if svc:
        sports = {p.get("name"): p for p in svc["spec"]["ports"]}
        for pname, want, pkey in (("http", port, key), ("metrics", mport, "metrics_listen")):
            if pname == "metrics" and not maddr:
                continue
            sp = sports.get(pname)
            if not sp or sp.get("port") != want or sp.get("targetPort", sp.get("port")) not in (pname, want):
                err(f"Service {n}: needs port {pname} = {want} with targetPort {pname} ({section}.{pkey} port), "
                    f"got {sp}")
        sann = svc["metadata"].get("annotations", {})
        if "prometheus.io/port" in sann and sann["prometheus.io/port"] != str(mport):
            err(f"Service {n}: annotation prometheus.io/port {sann['prometheus.io/port']} but {section}.metrics_listen port {mport}")
# Every endpoint of a ServiceMonitor scrapes the metrics port of each
# Bulwark Service it selects.
for sm in monitors:
    smn = sm["metadata"]["name"]
    sel = sm["spec"]["selector"].get("matchLabels", {})
    chosen = [d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] in metrics_ports
              and all((d["metadata"].get("labels") or {}).get(k) == v for k, v in sel.items())]
    if not chosen:
        err(f"ServiceMonitor/{smn}: selects none of the sharder's, worker's and relay's Services")
    for svc in chosen:
        n = svc["metadata"]["name"]
        mname, mport = metrics_ports[n]
        sports = {p.get("name"): p.get("port") for p in svc["spec"]["ports"]}
        for ep in sm["spec"]["endpoints"]:
            if ep.get("port") != mname or sports.get(ep.get("port")) != mport:
                err(f"ServiceMonitor/{smn}: endpoint port {ep.get('port')!r} is {sports.get(ep.get('port'))} on Service {n}, "
                    f"not its metrics port {mname} = {mport} ({n}.metrics_listen port)")
            if ep.get("path", "/metrics") != "/metrics":
                err(f"ServiceMonitor/{smn}: endpoint path {ep.get('path')!r}, the binaries serve /metrics")

# The relay: the three secrets it does not start without, each from a
# required secretKeyRef; a PodDisruptionBudget; time after preStop to close
# its bots' connections; with several replicas, ClientIP affinity on its
# Service (a session lives in one pod's memory and a bot RESUMEs at the same
# URL); a ws:// relay.public_url (what bots are told to connect and resume
# to) names that Service, in this namespace, on its http port.
rdep = by.get(("Deployment", "relay"))
if not rdep:
    err("no Deployment relay")
else:
    pod = rdep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    env = {e["name"]: e for e in c.get("env", [])}
    for var in ("BULWARK_DISCORD__TOKEN", "BULWARK_AMQP__URL", "BULWARK_REDIS__URL"):
        ref = ((env.get(var) or {}).get("valueFrom") or {}).get("secretKeyRef")
        if not ref:
            err(f"relay: {var} does not come from a secretKeyRef (the relay does not start without it)")
        elif ref.get("optional") is True:
            err(f"relay: {var}'s secretKeyRef ({ref.get('name')}/{ref.get('key')}) is optional: the relay needs it")
    if ("PodDisruptionBudget", "relay") not in by:
        err("no PodDisruptionBudget relay")
    pre = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    grace = pod.get("terminationGracePeriodSeconds", 30)
    if grace < pre + 10:
        err(f"relay: terminationGracePeriodSeconds {grace} leaves under 10 s after preStop ({pre} s) "
            f"to close the bots' connections")
    replicas = rdep["spec"].get("replicas", 1)
    rsvc = by.get(("Service", "relay"))
    if not rsvc:
        err("no Service relay")
    else:
        if replicas > 1 and rsvc["spec"].get("sessionAffinity") != "ClientIP":
            err(f"Service relay: sessionAffinity {rsvc['spec'].get('sessionAffinity', 'None')} with {replicas} relay "
                f"replicas: a bot's RESUME would reach any pod, and every pod but the session's answers op 9; "
                f"set ClientIP")
        url = rcfg.get("relay", {}).get("public_url", "")
        if url.startswith("ws://"):
            ns = rdep["metadata"].get("namespace", "default")
            m = re.fullmatch(r"ws://([^/:?#]+)(?::(\d+))?/?", url)
            hosts = {"relay", f"relay.{ns}", f"relay.{ns}.svc", f"relay.{ns}.svc.cluster.local"}
            http = next((p.get("port") for p in rsvc["spec"]["ports"] if p.get("name") == "http"), None)
            if not m or m.group(1) not in hosts:
                err(f"relay.public_url {url}: not the Service relay in namespace {ns} "
                    f"(ws://relay.{ns}.svc.cluster.local:{http}): bots would connect and resume elsewhere")
            elif int(m.group(2) or 80) != http:
                err(f"relay.public_url {url}: port {m.group(2) or 80} is not the Service relay's port http {http}")

# The worker's read API (/v1/*): with read_api = "token" (the default) on a
# non-loopback listener the worker needs BULWARK_WORKER__READ_TOKEN, from a
# Secret and required (a pod without it waits in CreateContainerConfigError
# instead of failing later). Production never opens it.
read_api = wcfg.get("worker", {}).get("read_api", "token")
if PRODUCTION and read_api != "token":
    err(f"production: worker.read_api is {read_api!r}: it must be \"token\" (anyone who reaches the port "
        f"would read member names, roles and avatars)")
wdep = by.get(("Deployment", "worker"))
if wdep and read_api == "token" and not is_loopback(listen("worker", "http_listen", "0.0.0.0:8081")):
    c = wdep["spec"]["template"]["spec"]["containers"][0]
    e = next((e for e in c.get("env", []) if e["name"] == "BULWARK_WORKER__READ_TOKEN"), {})
    ref = (e.get("valueFrom") or {}).get("secretKeyRef")
    if not ref:
        err("worker: worker.read_api is \"token\" but BULWARK_WORKER__READ_TOKEN does not come from a secretKeyRef "
            "(the worker refuses to start without a token on a non-loopback http_listen)")
    elif ref.get("optional") is True:
        err(f"worker: BULWARK_WORKER__READ_TOKEN's secretKeyRef ({ref.get('name')}/{ref.get('key')}) is optional: "
            f"with worker.read_api = \"token\" it must be required")

# TLS files ([tls] ca_file, client_cert_file, client_key_file) must be on a
# mounted volume; in production every binary trusts the CA of Secret
# bulwark-ca (key ca.crt), required and read-only.
for which, c, kind in (("sharder", cfg, "StatefulSet"), ("worker", wcfg, "Deployment"), ("relay", rcfg, "Deployment")):
    tls = c.get("tls", {})
    if PRODUCTION and not tls.get("ca_file"):
        err(f"production: the {which}'s bulwark.toml sets no tls.ca_file: amqps:// and rediss:// need the CA "
            f"of Secret bulwark-ca (mounted at /etc/bulwark/tls)")
    wl = by.get((kind, which))
    if not wl:
        continue
    pod = wl["spec"]["template"]["spec"]
    ctr = pod["containers"][0]
    vols = {v["name"]: v for v in pod.get("volumes", [])}
    for key in ("ca_file", "client_cert_file", "client_key_file"):
        path = tls.get(key)
        if not path:
            continue
        d, f = posixpath.split(posixpath.normpath(path))
        m = next((m for m in ctr.get("volumeMounts", []) if posixpath.normpath(m["mountPath"]) == d), None)
        if not m:
            err(f"{which}: tls.{key} {path}: no volume of {kind}/{which} is mounted at {d}")
            continue
        v = vols.get(m["name"], {})
        sec = v.get("secret")
        if PRODUCTION and key == "ca_file":
            if not sec or sec.get("secretName") != "bulwark-ca":
                err(f"{which}: tls.ca_file {path}: the volume at {d} must be Secret bulwark-ca, got {v}")
                continue
            if sec.get("optional") is True:
                err(f"{which}: tls.ca_file {path}: Secret bulwark-ca is mounted optional: production requires it")
            if m.get("readOnly") is not True:
                err(f"{which}: tls.ca_file {path}: mount {d} read-only")
        if sec and sec.get("items") is not None:
            if not any(i.get("path") == f for i in sec["items"]):
                err(f"{which}: tls.{key} {path}: Secret {sec.get('secretName')} at {d} projects no file {f} (items)")
        elif sec and PRODUCTION and key == "ca_file" and f != "ca.crt":
            err(f"{which}: tls.ca_file {path}: Secret bulwark-ca's key is ca.crt")

# NetworkPolicy ingress names its sources: no rule without `from` (every
# source), no peer `namespaceSelector: {}` without a podSelector (every pod
# of every namespace), no ipBlock /0. The sharder's and worker's policies
# restrict ingress at all (policyTypes), name only ports their pods have,
# and open the metrics port (Prometheus); so do the relay's. The worker and
# the relay have no internet egress (the relay holds the bot token and never
# talks to Discord): Egress restricted, no rule to every address.
def empty_selector(sel):
    return not (sel.get("matchLabels") or sel.get("matchExpressions"))
for np in (d for d in docs if d["kind"] == "NetworkPolicy"):
    n = np["metadata"]["name"]
    for i, rule in enumerate(np["spec"].get("ingress") or []):
        peers = rule.get("from")
        if not peers:
            err(f"NetworkPolicy {n}: ingress rule {i} has no `from`: it admits every namespace and every address")
            continue
        for peer in peers:
            ns, pods, ipb = peer.get("namespaceSelector"), peer.get("podSelector"), peer.get("ipBlock")
            if ns is not None and empty_selector(ns) and (pods is None or empty_selector(pods)):
                err(f"NetworkPolicy {n}: ingress rule {i} admits every namespace (namespaceSelector {{}} "
                    f"without a podSelector): name the namespace (kubernetes.io/metadata.name) and pods")
            if ipb and str(ipb.get("cidr", "")).endswith("/0"):
                err(f"NetworkPolicy {n}: ingress rule {i} admits every namespace and address (ipBlock {ipb['cidr']})")
for n in ("sharder", "worker", "relay"):
    np = by.get(("NetworkPolicy", n))
    wl = by.get(("StatefulSet", n)) or by.get(("Deployment", n))
    if not np or not wl:
        continue
    if "Ingress" not in (np["spec"].get("policyTypes") or ["Ingress"]):
        err(f"NetworkPolicy {n}: policyTypes lacks Ingress: every source could reach the pods")
    names = {p.get("name") for p in wl["spec"]["template"]["spec"]["containers"][0].get("ports", [])}
    opened = set()
    for rule in np["spec"].get("ingress") or []:
        for p in rule.get("ports") or []:
            opened.add(p.get("port"))
            if isinstance(p.get("port"), str) and p["port"] not in names:
                err(f"NetworkPolicy {n}: ingress port {p['port']!r} is no container port of {n} (it matches nothing)")
    mname, mport = metrics_ports.get(n, ("metrics", None))
    if mname not in opened and mport not in opened:
        err(f"NetworkPolicy {n}: no ingress rule opens the metrics port {mname} ({mport}): Prometheus cannot scrape")
for n in ("worker", "relay"):
    np = by.get(("NetworkPolicy", n))
    if not np:
        continue
    if "Egress" not in (np["spec"].get("policyTypes") or []):
        err(f"NetworkPolicy {n}: policyTypes lacks Egress: the {n} could reach every address (it needs no internet)")
    for i, rule in enumerate(np["spec"].get("egress") or []):
        if not rule.get("to"):
            err(f"NetworkPolicy {n}: egress rule {i} has no `to`: it reaches every address (the {n} needs no internet)")
        for peer in rule.get("to") or []:
            cidr = str((peer.get("ipBlock") or {}).get("cidr", ""))
            if cidr.endswith("/0"):
                err(f"NetworkPolicy {n}: egress rule {i} reaches every address (ipBlock {cidr}): the {n} needs no internet")

if ("HorizontalPodAutoscaler", "worker") not in by and \
        not any(so["spec"]["scaleTargetRef"]["name"] == "worker" for so in scaled):
    err("no autoscaler for the worker (HorizontalPodAutoscaler or KEDA ScaledObject worker)")
# DNS egress must work whichever path the cluster's DNS takes
# (docs/operations.md, "DNS"): CoreDNS pods behind kube-dns's ClusterIP,
# NodeLocal DNSCache on 169.254.20.10, and NodeLocal DNSCache answering on
# the kube-dns ClusterIP itself (no DNAT: an ipBlock /32).
def dns_ports(rule):
    got = {(p.get("port"), p.get("protocol", "TCP")) for p in rule.get("ports", [])}
    return {(53, "UDP"), (53, "TCP")} <= got
for n in ("sharder", "worker", "relay"):
    np = by.get(("NetworkPolicy", n))
    if not np:
        err(f"no NetworkPolicy {n}")
        continue
    peers = [(peer, rule) for rule in np["spec"].get("egress", []) for peer in rule.get("to", [])]
    kube_dns = any(dns_ports(r) and (p.get("podSelector") or {}).get("matchLabels", {}).get("k8s-app") == "kube-dns"
                   for p, r in peers)
    nodelocal = any(dns_ports(r) and (p.get("ipBlock") or {}).get("cidr") == "169.254.20.10/32" for p, r in peers)
    cluster_ip = any(dns_ports(r) and (p.get("ipBlock") or {}).get("cidr", "").endswith("/32")
                     and p["ipBlock"]["cidr"] != "169.254.20.10/32" for p, r in peers)
    for ok, what in ((kube_dns, "the kube-dns pods (k8s-app: kube-dns)"),
                     (nodelocal, "NodeLocal DNSCache (ipBlock 169.254.20.10/32)"),
                     (cluster_ip, "kube-dns's ClusterIP (an ipBlock /32)")):
        if not ok:
            err(f"NetworkPolicy {n}: no egress on port 53 UDP and TCP to {what}")

yaml.safe_dump_all(builtin, open(out, "w"), sort_keys=False)
for e in errors:
    print(f"FAIL: {e}", file=sys.stderr)
kinds = sorted({d["kind"] for d in docs})
print(f"{len(docs)} resources ({', '.join(kinds)}); {len(docs) - len(builtin)} CRD resources checked against deploy/schemas")
sys.exit(1 if errors else 0)
PY
  then
    echo "FAIL: overlay $o breaks the checks above" >&2
    failed=1
  fi
  # The alert rules as Prometheus would load them (written by the step above).
  for rules in "$tmp/$o".*.rules.yaml; do
    [ -e "$rules" ] || continue
    if ! "$PROMTOOL" check rules "$rules" >"$tmp/$o.promtool" 2>&1; then
      echo "FAIL: promtool check rules on overlay $o's PrometheusRule ${rules##*/$o.}:" >&2
      cat "$tmp/$o.promtool" >&2
      failed=1
    else
      echo "promtool check rules ${rules##*/$o.}: $(grep -o '[0-9]* rules found' "$tmp/$o.promtool")"
    fi
  done
  for v in "${K8S_VERSIONS[@]}"; do
    # --quiet prints only WARN/ERROR lines. A WARN is a kind with no schema:
    # after the CRD filter above that is a mistake, so it fails too.
    if ! kv --strict --quiet -k "$v" "$tmp/$o.builtin.yaml" >"$tmp/$o.kv" 2>&1 \
        || grep -q . "$tmp/$o.kv"; then
      echo "FAIL: kubernetes-validate --strict -k $v on overlay $o:" >&2
      cat "$tmp/$o.kv" >&2
      failed=1
    else
      echo "kubernetes-validate --strict -k $v: ok"
    fi
  done
done

echo "--- secret.example.yaml"
# The example Secret: valid, in no kustomization, placeholders only.
if grep -rqE "^[^#]*secret\.example" --include=kustomization.yaml . ; then
  echo "FAIL: secret.example.yaml is listed in a kustomization" >&2
  failed=1
fi
if ! python3 - secret.example.yaml <<'PY'
import sys, yaml
(doc,) = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
bad = [k for k, v in doc.get("stringData", {}).items()
       if k != "redis-url" and "REPLACE_ME" not in v]
if doc.get("data") or bad:
    sys.exit(f"FAIL: secret.example.yaml must hold placeholders (REPLACE_ME) only: {bad or 'data:'}")
PY
then
  failed=1
fi
if ! kv --strict --quiet -k "${K8S_VERSIONS[0]}" secret.example.yaml >"$tmp/secret.kv" 2>&1 \
    || grep -q . "$tmp/secret.kv"; then
  echo "FAIL: kubernetes-validate on secret.example.yaml:" >&2
  cat "$tmp/secret.kv" >&2
  failed=1
else
  echo "kubernetes-validate --strict: ok"
fi

echo "--- grafana/bulwark-dashboard.json"
# The dashboard cannot drift from the code: every metric name in its PromQL
# (panel targets and the label_values() of its variables, including
# __name__ matchers) must appear as a quoted string in the Rust sources.
# Histogram/summary series suffixes (_bucket, _sum, _count) are stripped
# when the full name is not found.
# The alert rules' expressions get the same check.
metric_src=()
for d in "${METRIC_SOURCES[@]}"; do metric_src+=("../$d/src"); done
if ! python3 - grafana/bulwark-dashboard.json overlays/production/prometheusrule.yaml \
    "${metric_src[@]}" <<'PY'
import json, pathlib, re, sys, yaml

dash = json.load(open(sys.argv[1]))
rules = yaml.safe_load(open(sys.argv[2]))
src = "".join(p.read_text() for d in sys.argv[3:] for p in pathlib.Path(d).rglob("*.rs"))
if dash.get("schemaVersion") != 39:
    sys.exit(f"FAIL: dashboard schemaVersion {dash.get('schemaVersion')}, expected 39")
exprs = []
def walk(panels):
    for p in panels:
        exprs.extend(t["expr"] for t in p.get("targets", []) if t.get("expr"))
        walk(p.get("panels", []))
walk(dash.get("panels", []))
for v in dash.get("templating", {}).get("list", []):
    q = v.get("query")
    q = q.get("query", "") if isinstance(q, dict) else (q or "")
    m = re.fullmatch(r"\s*label_values\((.*),\s*\w+\)\s*", q)
    if m:
        exprs.append(m.group(1))
if not exprs:
    sys.exit("FAIL: no PromQL expressions found in the dashboard")
alert_exprs = [r["expr"] for g in rules["spec"]["groups"] for r in g["rules"]]
if not alert_exprs:
    sys.exit("FAIL: no alert expressions found in prometheusrule.yaml")
exprs += alert_exprs
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool",
            "and", "or", "unless", "offset", "inf", "nan"}
names = set()
for e in exprs:
    for alt in re.findall(r'__name__\s*=~?\s*"([^"]*)"', e):
        names.update(alt.split("|"))
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', e)           # string literals
    e = re.sub(r"\{[^}]*\}", "", e)                       # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)                      # range durations
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", e)
    # An identifier not followed by "(" (a function) and not a keyword.
    for m in re.finditer(r"(?<![\w.])([A-Za-z_:][\w:]*)(\s*\()?", e):
        if not m.group(2) and m.group(1).lower() not in KEYWORDS:
            names.add(m.group(1))
missing = []
for n in sorted(names):
    base = n
    if f'"{n}"' not in src:
        base = re.sub(r"_(bucket|sum|count)$", "", n)
    if f'"{base}"' not in src:
        missing.append(n)
for n in missing:
    print(f"FAIL: dashboard or alerts use metric {n}, which no source of {', '.join(sys.argv[3:])} emits", file=sys.stderr)
if not missing:
    print(f"{len(exprs)} expressions ({len(alert_exprs)} alerts), {len(names)} metric names: all emitted by the sources")
sys.exit(1 if missing else 0)
PY
then
  echo "FAIL: the dashboard or the alert rules reference metrics the code does not emit" >&2
  failed=1
fi

if [ "$failed" != 0 ]; then
  echo "deploy/validate.sh: FAILED" >&2
  exit 1
fi
echo "deploy/validate.sh: ${#overlays[@]} overlays rendered and valid"
