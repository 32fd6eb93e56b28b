#!/usr/bin/env python3
"""Checks the deployment files offline, as the test command runs them:

- lints helm/agora (strict: warnings fail) and renders it (the Helm SDK through helm-python-sdk, no helm binary)
  with the default values and with every file in helm/agora/examples/,
  checks the values against values.schema.json, and validates every
  rendered object with kubernetes-validate --strict against KUBE_VERSION
  (objects of the Prometheus operator's CRDs, which have no bundled schema,
  are checked for their apiVersion, kind and spec only);
- checks that an unknown value is refused by the schema;
- checks that every alert in files/alerts.yaml has a summary and a runbook
  link to a section of docs/runbooks.md, and that every dashboard is JSON
  with a uid and panels.

Exits non-zero naming each problem.
"""
import sys
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import yaml

KUBE_VERSION = "1.33.0"
ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "agora"
OPERATOR_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}

problems = []


def check_values(label, values):
    chart = helm.Chart.load(CHART)
    try:
        chart.validate_schema(values)
    except helm.HelmError as e:  # type: ignore[attr-defined]
        problems.append(f"{label}: values refused by the schema: {e}")
        return
    manifests = chart.render(values, name="agora", namespace="agora", is_install=True)
    kinds = {}
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if not doc:
                continue
            key = (doc.get("apiVersion"), doc.get("kind"))
            name = doc.get("metadata", {}).get("name", "?")
            kinds[key[1]] = kinds.get(key[1], 0) + 1
            if key in OPERATOR_KINDS:
                if not isinstance(doc.get("spec"), dict):
                    problems.append(f"{label}: {path}: {key[1]} {name} has no spec")
                continue
            try:
                kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
            except kubernetes_validate.ValidationError as e:
                problems.append(f"{label}: {path}: {key[1]} {name}: {e.message} at {'.'.join(map(str, e.path))}")
            except Exception as e:  # noqa: BLE001 - any other refusal is a problem too
                problems.append(f"{label}: {path}: {key[1]} {name}: {e}")
    summary = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
    print(f"helm/agora with {label}: {summary}")
    return kinds


def check_alerts_and_dashboards():
    import json
    import re

    sections = {
        re.sub(r"[^a-z0-9 -]", "", line[3:].strip().lower()).replace(" ", "-")
        for line in (ROOT / "docs" / "runbooks.md").read_text().splitlines()
        if line.startswith("## ")
    }
    rules = yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())
    alerts = [r for g in rules["groups"] for r in g["rules"] if "alert" in r]
    for a in alerts:
        notes = a.get("annotations", {})
        anchor = notes.get("runbook_url", "").rpartition("#")[2]
        if not notes.get("summary") or anchor not in sections:
            problems.append(f"alert {a['alert']}: needs a summary and a runbook_url to docs/runbooks.md#{a['alert'].lower()}")
    for path in sorted((CHART / "files" / "dashboards").glob("*.json")):
        board = json.loads(path.read_text())
        if not board.get("uid") or not board.get("panels"):
            problems.append(f"{path.name}: a dashboard needs a uid and panels")
    print(f"{len(alerts)} alerts with runbooks, {len(list((CHART / 'files' / 'dashboards').glob('*.json')))} dashboards")


def main():
    report = helm.lint(CHART, strict=True, kube_version=f"v{KUBE_VERSION}")
    for m in report.get("messages", []):
        if m.get("severity", 0) >= 2:
            problems.append(f"helm lint: {m.get('path')}: {m.get('error')}")
    problems.extend(f"helm lint: {e}" for e in report.get("errors", []))
    default_kinds = check_values("default values", None)
    for example in sorted((CHART / "examples").glob("*.yaml")):
        values = yaml.safe_load(example.read_text())
        check_values(f"examples/{example.name}", values)
    # The chart's promises about its defaults.
    if default_kinds is not None:
        for kind, least in [("Deployment", 5), ("HorizontalPodAutoscaler", 4), ("PodDisruptionBudget", 5),
                            ("NetworkPolicy", 5), ("Job", 1)]:
            if default_kinds.get(kind, 0) < least:
                problems.append(f"default values: expected at least {least} {kind}, got {default_kinds.get(kind, 0)}")
    # The schema refuses what it does not know.
    try:
        helm.Chart.load(CHART).validate_schema({"targets": {"edge": {"replicas": "three"}}})
        problems.append("the schema accepted targets.edge.replicas = 'three'")
    except Exception:  # noqa: BLE001
        pass
    check_alerts_and_dashboards()
    if problems:
        print("\n".join(problems), file=sys.stderr)
        sys.exit(1)
    print("deployment files are valid")


main()
