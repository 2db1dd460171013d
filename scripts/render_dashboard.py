#!/usr/bin/env python3
"""Renders the dashboard's data, as a live Prometheus returned it, to a PNG (docs/ops-dashboard.png).

  OPS_DUMP=/tmp/ops.json scripts/test-ops          # scrape the seed example, dump every query
  python3 scripts/render_dashboard.py /tmp/ops.json docs/ops-dashboard.png

One subplot per panel of deploy/grafana/backstop.json, one line per series (legend from the
panel's legendFormat). Needs matplotlib (`pip install matplotlib`); a docs step, not part of CI.
"""
import json
import math
import re
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

dump = json.load(open(sys.argv[1]))
out = sys.argv[2]
t0 = dump["start"]
panels = []
for q in dump["queries"]:
    if not panels or panels[-1]["title"] != q["panel"]:
        panels.append({"title": q["panel"], "unit": q["unit"], "queries": []})
    panels[-1]["queries"].append(q)


def legend(fmt, metric):
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: metric.get(m.group(1), ""), fmt).strip()


cols = 2
rows = math.ceil(len(panels) / cols)
fig, axes = plt.subplots(rows, cols, figsize=(14, 3.2 * rows), squeeze=False)
for ax, p in zip(axes.flat, panels):
    for q in p["queries"]:
        for s in q["result"]:
            xs = [float(t) - t0 for t, _ in s["values"]]
            ys = [float(v) for _, v in s["values"]]
            name = legend(q["legend"], s["metric"])
            if p["title"] == "Circuit breaker state":
                ax.step(xs, ys, where="post", label=name)
                ax.set_yticks([0, 1, 2], ["closed", "half-open", "open"])
            else:
                ax.plot(xs, ys, label=name, linewidth=1.2)
    ax.set_title(p["title"] + (f"  [{p['unit']}]" if p["unit"] not in ("", "short") else ""))
    ax.set_xlabel("seconds since the run started")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")
for ax in list(axes.flat)[len(panels):]:
    ax.axis("off")
fig.suptitle("backstop dashboard — seed example scraped by a live Prometheus (scripts/test-ops)")
fig.tight_layout()
fig.savefig(out, dpi=90)
print(f"wrote {out}")
