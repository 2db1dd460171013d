#!/usr/bin/env python3
"""Checks a live Prometheus against the repo's dashboard and alert rules (used by scripts/test-ops).

  prom_check.py PROM_URL DASHBOARD_JSON START END [--alert NAME] [--dump FILE]

For every panel target of the Grafana dashboard, runs its expr over [START, END] (Unix seconds,
step 1 s) through /api/v1/query_range and requires at least one series with a non-NaN value.
With --alert NAME, requires ALERTS{alertname=NAME, alertstate="firing"} to have been present in
that window. --dump writes every query's result as JSON (input for scripts/render_dashboard.py).
Exit 0 when everything returned data, 1 otherwise (naming what did not).
"""
import json
import math
import sys
import urllib.parse
import urllib.request


def query_range(prom, expr, start, end):
    q = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": "1"})
    with urllib.request.urlopen(f"{prom}/api/v1/query_range?{q}", timeout=30) as r:
        body = json.load(r)
    if body.get("status") != "success":
        raise RuntimeError(f"{expr}: {body}")
    return body["data"]["result"]


def has_data(result):
    return any(
        not math.isnan(float(v)) for s in result for _, v in s["values"]
    )


def main():
    args = sys.argv[1:]
    alert, dump = None, None
    if "--alert" in args:
        i = args.index("--alert")
        alert = args[i + 1]
        del args[i : i + 2]
    if "--dump" in args:
        i = args.index("--dump")
        dump = args[i + 1]
        del args[i : i + 2]
    prom, dashboard, start, end = args
    panels = json.load(open(dashboard))["panels"]
    failed, out = [], []
    for p in panels:
        for t in p["targets"]:
            result = query_range(prom, t["expr"], start, end)
            ok = has_data(result)
            print(f"{'ok ' if ok else 'NO DATA'} [{p['title']}] {t['expr']} ({len(result)} series)")
            if not ok:
                failed.append(f"{p['title']}: {t['expr']}")
            out.append({"panel": p["title"], "legend": t.get("legendFormat", ""), "expr": t["expr"],
                        "unit": p.get("fieldConfig", {}).get("defaults", {}).get("unit", ""),
                        "result": result})
    if alert:
        expr = f'ALERTS{{alertname="{alert}",alertstate="firing"}}'
        result = query_range(prom, expr, start, end)
        ok = has_data(result)
        who = sorted({s["metric"].get("breaker", "?") for s in result})
        print(f"{'ok ' if ok else 'NOT FIRED'} alert {alert} firing in the window: {who}")
        if not ok:
            failed.append(f"alert {alert} never fired")
    if dump:
        json.dump({"start": float(start), "end": float(end), "queries": out}, open(dump, "w"))
    if failed:
        print("FAILED:\n  " + "\n  ".join(failed))
        sys.exit(1)


if __name__ == "__main__":
    main()
