#!/usr/bin/env bash
# Renders every overlay with kustomize and validates the output:
#  1. `kubectl kustomize` must render it;
#  2. every built-in kind passes `kubernetes-validate --strict` (bundled
#     OpenAPI schemas, offline) for the oldest and newest Kubernetes we
#     support;
#  3. CRD kinds (RabbitmqCluster, ServiceMonitor, PrometheusRule) have no schema in
#     kubernetes-validate, which only WARNs on a missing schema and passes.
#     So they are filtered out of step 2 and checked here by hand (apiVersion
#     and the fields we rely on), and any OTHER kind without a schema fails:
#     a typo in a kind or apiVersion cannot pass as "unknown";
#  4. Bulwark's own invariants, read from the rendered ConfigMap's TOML:
#     sharder replicas == sharder.process_count, PROCESS_INDEX from the
#     pod-index label, container/Service/scrape ports == http_listen,
#     terminationGracePeriodSeconds > preStop + sharder.shutdown_grace,
#     no Secret rendered, secrets only by secretKeyRef, hardened
#     securityContext, resources, probes on /readyz and /healthz, ndots 1.
#  5. every metric name in grafana/bulwark-dashboard.json's PromQL and in the
#     production alert rules is emitted by the Rust sources (sharder/src,
#     worker/src, dnscache/src); every alert has a runbook section.
# Usage: deploy/validate.sh [overlay...]   (default: every overlay)
set -euo pipefail
cd "$(dirname "$0")"

# Oldest supported (pod-index label needs 1.28; preStop sleep is on by
# default from 1.30) and the newest schemas the tool bundles.
K8S_VERSIONS=(1.31.0 1.37.0)

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
  if ! python3 - "$tmp/$o.yaml" "$tmp/$o.builtin.yaml" <<'PY'
import re, sys, tomllib, yaml

src, out = sys.argv[1], sys.argv[2]
docs = [d for d in yaml.safe_load_all(open(src)) if d]
errors = []
def err(msg): errors.append(msg)

# CRDs kubernetes-validate has no schema for: checked here, by hand.
CRDS = {
    "RabbitmqCluster": "rabbitmq.com/v1beta1",
    "ServiceMonitor": "monitoring.coreos.com/v1",
    "PrometheusRule": "monitoring.coreos.com/v1",
}
DURATION = re.compile(r"^(\d+(ms|s|m|h))+$")
builtin = []
for d in docs:
    kind, api = d.get("kind"), d.get("apiVersion")
    name = (d.get("metadata") or {}).get("name")
    if not name:
        err(f"{kind} without metadata.name")
    if kind in CRDS:
        if api != CRDS[kind]:
            err(f"{kind}/{name}: apiVersion {api}, expected {CRDS[kind]}")
        spec = d.get("spec") or {}
        if kind == "RabbitmqCluster":
            r = spec.get("replicas")
            if not isinstance(r, int) or r < 1 or r % 2 == 0:
                err(f"{kind}/{name}: spec.replicas must be an odd integer (quorum), got {r!r}")
            unknown = set(spec) - {"replicas", "image", "resources", "persistence", "rabbitmq",
                                   "service", "override", "affinity", "tolerations", "tls",
                                   "terminationGracePeriodSeconds", "delayStartSeconds",
                                   "secretBackend", "imagePullSecrets", "skipPostDeploySteps",
                                   "autoEnableAllFeatureFlags"}
            if unknown:
                err(f"{kind}/{name}: unknown spec fields {sorted(unknown)}")
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
        if kind == "ServiceMonitor":
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

def listen_port(section, default):
    addr = cfg.get(section, {}).get("http_listen", default)
    return int(addr.rsplit(":", 1)[1])

# The config file both binaries read.
cms = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("bulwark-config")]
if len(cms) != 1:
    err(f"expected one bulwark-config ConfigMap, found {len(cms)}")
    cfg = {}
else:
    cfg = tomllib.loads(cms[0]["data"]["bulwark.toml"])
    for section, key in [("discord", "token"), ("amqp", "url"), ("redis", "url"), ("sharder", "admin_token")]:
        if key in cfg.get(section, {}):
            err(f"bulwark.toml sets {section}.{key}: it is a secret, set it from the Secret")

sts = by.get(("StatefulSet", "sharder"))
if not sts:
    err("no StatefulSet sharder")
else:
    replicas = sts["spec"].get("replicas", 1)
    pc = cfg.get("sharder", {}).get("process_count", 1)
    if replicas != pc:
        err(f"StatefulSet sharder has {replicas} replicas but sharder.process_count is {pc}: change both together")
    c = sts["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in c.get("env", [])}
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
    if d["metadata"]["name"] in ("sharder", "worker") and opts.get("ndots") != "1":
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
                             "BULWARK_SHARDER__ADMIN_TOKEN") \
                    and "secretKeyRef" not in e.get("valueFrom", {}):
                err(f"{ref}/{c['name']}: {e['name']} must come from a secretKeyRef")
        if d["metadata"]["name"] in ("sharder", "worker"):
            paths = {p: (c.get(p) or {}).get("httpGet", {}).get("path") for p in ("readinessProbe", "livenessProbe")}
            if paths != {"readinessProbe": "/readyz", "livenessProbe": "/healthz"}:
                err(f"{ref}: readiness must probe /readyz and liveness /healthz, got {paths}")

# The HTTP port the binary binds (http_listen) is the one the probes,
# Services and scrape annotations use.
for n, section, default in (("sharder", "sharder", "0.0.0.0:8080"), ("worker", "worker", "0.0.0.0:8081")):
    port = listen_port(section, default)
    wl = by.get(("StatefulSet", n)) or by.get(("Deployment", n))
    if wl:
        c = wl["spec"]["template"]["spec"]["containers"][0]
        cports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
        if cports.get("http") != port:
            err(f"{n}: containerPort http {cports.get('http')} but {section}.http_listen port {port}")
        ann = wl["spec"]["template"]["metadata"].get("annotations", {})
        if ann.get("prometheus.io/port") != str(port):
            err(f"{n}: prometheus.io/port {ann.get('prometheus.io/port')} but http_listen port {port}")
    svc = by.get(("Service", n))
    if svc and not any(p.get("name") == "http" and p.get("port") == port for p in svc["spec"]["ports"]):
        err(f"Service {n}: no port http = {port}")

if ("HorizontalPodAutoscaler", "worker") not in by:
    err("no HorizontalPodAutoscaler worker")
for n in ("sharder", "worker"):
    if ("NetworkPolicy", n) not in by:
        err(f"no NetworkPolicy {n}")

yaml.safe_dump_all(builtin, open(out, "w"), sort_keys=False)
for e in errors:
    print(f"FAIL: {e}", file=sys.stderr)
kinds = sorted({d["kind"] for d in docs})
print(f"{len(docs)} resources ({', '.join(kinds)}); {len(docs) - len(builtin)} CRD resources checked by hand")
sys.exit(1 if errors else 0)
PY
  then
    echo "FAIL: overlay $o breaks the checks above" >&2
    failed=1
  fi
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
if ! python3 - grafana/bulwark-dashboard.json overlays/production/prometheusrule.yaml \
    ../sharder/src ../worker/src ../dnscache/src <<'PY'
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
    print(f"FAIL: dashboard or alerts use metric {n}, which no sharder/worker/dnscache source emits", file=sys.stderr)
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
