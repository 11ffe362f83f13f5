"""Reports as files: area per class (HTML with a bar chart, or CSV) and evaluation scores (HTML)."""
from __future__ import annotations

import csv
import html

from .areas import ClassArea


def _unit(units: str) -> str:
    return "m²" if units == "m" else "pixels"


def _bars(rows: list[tuple[str, str, float]]) -> str:
    """A small horizontal bar chart as inline SVG: (label, colour, percent) rows."""
    h = 22 * len(rows) + 8
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="520" height="{h}" role="img">']
    for i, (label, colour, pct) in enumerate(rows):
        y = 4 + 22 * i
        parts.append(f'<text x="0" y="{y + 15}" font-size="12">{html.escape(label)}</text>')
        parts.append(f'<rect x="170" y="{y + 2}" width="{max(0.0, 3.0 * pct):.1f}" height="16" '
                     f'fill="{colour}" stroke="#555" stroke-width="0.5"/>')
        parts.append(f'<text x="{176 + 3.0 * pct:.1f}" y="{y + 15}" font-size="12">{pct:.1f}%</text>')
    parts.append("</svg>")
    return "".join(parts)


_STYLE = ("<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}"
          "td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}th{background:#eee}"
          "td.l,th.l{text-align:left}.sw{display:inline-block;width:12px;height:12px;border:1px solid #555;"
          "margin-right:6px;vertical-align:middle}</style>")


def _page(title: str, body: str, details: dict) -> str:
    info = "".join(f'<tr><td class="l">{html.escape(str(k))}</td><td class="l">{html.escape(str(v))}</td></tr>'
                   for k, v in details.items())
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>{_STYLE}"
            f"</head><body><h1>{html.escape(title)}</h1>{body}<h2>Inputs and settings</h2><table>{info}</table>"
            "</body></html>")


def write_area_report(path: str, areas: list[ClassArea], units: str, title: str, details: dict) -> None:
    """Area and share of each class; CSV when `path` ends in .csv, else HTML."""
    if path.lower().endswith(".csv"):
        with open(path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["class_id", "class_name", "pixels", f"area_{'m2' if units == 'm' else 'pixels'}", "percent"])
            for a in areas:
                w.writerow([a.id, a.name, a.pixels, f"{a.area:.3f}", f"{a.percent:.3f}"])
        return
    unit = _unit(units)

    def ha(area):  # hectares only where areas are ground areas
        return f"<td>{area / 10000:,.3f}</td>" if units == "m" else ""

    rows = "".join(
        f'<tr><td class="l"><span class="sw" style="background:{a.color}"></span>{html.escape(a.name)}</td>'
        f"<td>{a.id}</td><td>{a.pixels:,}</td><td>{a.area:,.1f}</td>{ha(a.area)}<td>{a.percent:.2f}%</td></tr>"
        for a in areas)
    total_px = sum(a.pixels for a in areas)
    total = sum(a.area for a in areas)
    hectares = "<th>hectares</th>" if units == "m" else ""
    doc = _page(title,
                f"<table><tr><th class='l'>class</th><th>id</th><th>pixels</th><th>area ({unit})</th>{hectares}"
                f"<th>share</th></tr>{rows}<tr><th class='l'>total</th><th></th><th>{total_px:,}</th>"
                f"<th>{total:,.1f}</th>{ha(total).replace('td', 'th')}<th>100%</th></tr></table>"
                f"<h2>Share of the classified area</h2>{_bars([(a.name, a.color, a.percent) for a in areas])}",
                details)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(doc)


def write_evaluation_report(path: str, result: dict, names: list[str], title: str, details: dict) -> None:
    """Confusion matrix and per-class IoU, F1, precision and recall as HTML."""
    def f(v):
        return "–" if v is None else f"{v:.3f}"

    matrix = result["confusion"]
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names) + "<th>unclassified</th>"
    body = "".join(f'<tr><th class="l">{html.escape(n)}</th>' + "".join(f"<td>{v:,}</td>" for v in row) + "</tr>"
                   for n, row in zip(names, matrix))
    per_class = "".join(
        f'<tr><td class="l">{html.escape(n)}</td><td>{f(result["iou"][n])}</td><td>{f(result["f1"][n])}</td>'
        f'<td>{f(result["precision"][n])}</td><td>{f(result["recall"][n])}</td><td>{result["pixels"][n]:,}</td></tr>'
        for n in names)
    doc = _page(title,
                f"<p>Mean IoU <b>{f(result['miou'])}</b> (over the classes present in either raster), "
                f"mean F1 {f(result['mean_f1'])}, overall accuracy <b>{f(result['accuracy'])}</b>.</p>"
                f"<h2>Per class</h2><table><tr><th class='l'>class</th><th>IoU</th><th>F1</th><th>precision</th>"
                f"<th>recall</th><th>reference pixels</th></tr>{per_class}</table>"
                f"<h2>Confusion matrix</h2><p>Rows: reference; columns: classified.</p>"
                f"<table><tr><th></th>{head}</tr>{body}</table>", details)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(doc)
