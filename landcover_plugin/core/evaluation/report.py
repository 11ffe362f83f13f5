"""Reports as files: area per class (HTML with a bar chart, or CSV) and evaluation scores (HTML)."""
from __future__ import annotations

import csv
import html

from ..vector.areas import ClassArea


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


def _curve(points: list[tuple[float, float]], colour: str, x_max: float, y_max: float, w=480, h=160) -> str:
    if not points:
        return ""
    coords = " ".join(f"{40 + (w - 50) * x / max(x_max, 1e-9):.1f},{h - 20 - (h - 40) * y / max(y_max, 1e-9):.1f}"
                      for x, y in points)  # y_max at the top of the axis (y = 20)
    return f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{coords}"/>'


def _chart(title: str, series: list[tuple[str, str, list[tuple[float, float]]]], y_max: float) -> str:
    """A line chart as inline SVG: (label, colour, [(epoch, value)]) series over epochs."""
    x_max = max((x for _, _, pts in series for x, _ in pts), default=1)
    parts = ['<svg xmlns="http://www.w3.org/2000/svg" width="480" height="190" role="img">',
             f'<text x="40" y="12" font-size="12">{html.escape(title)}</text>',
             '<line x1="40" y1="140" x2="470" y2="140" stroke="#999"/><line x1="40" y1="20" x2="40" y2="140" '
             'stroke="#999"/>', f'<text x="4" y="24" font-size="10">{y_max:.2g}</text>',
             '<text x="28" y="140" font-size="10">0</text>',
             f'<text x="440" y="154" font-size="10">epoch {x_max:g}</text>']
    for i, (label, colour, pts) in enumerate(series):
        parts.append(_curve(pts, colour, x_max, y_max))
        parts.append(f'<text x="{40 + 150 * i}" y="182" font-size="11" fill="{colour}">{html.escape(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def write_training_report(path: str, result, classes, details: dict) -> None:
    """Loss and validation curves, and per-class IoU and confusion on the validation area, starting model
    beside the trained one, as HTML. result: the trainer's TrainResult."""
    def f(v):
        return "–" if v is None or (isinstance(v, float) and v != v) else f"{v:.3f}"

    rows = [r for r in result.history if r["epoch"] > 0]
    init = result.init_row or {}
    best = next((r for r in result.history if r["epoch"] == result.best_epoch), {})
    losses = [(r["epoch"], r["train_loss"]) for r in rows if r["train_loss"] == r["train_loss"]]
    charts = _chart("training loss", [("loss", "#d7301f", losses)], max([v for _, v in losses] + [1e-6]))
    if "val_miou" in best:
        charts += _chart("validation mean IoU", [
            ("trained", "#2b7bd6", [(r["epoch"], r["val_miou"]) for r in rows]),
            ("starting model", "#888888", [(0, init.get("val_miou", 0)), (rows[-1]["epoch"] if rows else 1,
                                                                          init.get("val_miou", 0))])], 1.0)
        per_class = "".join(
            f'<tr><td class="l"><span class="sw" style="background:{c.color}"></span>{html.escape(c.name)}</td>'
            f'<td>{f(init.get("iou_" + c.name))}</td><td>{f(best.get("iou_" + c.name))}</td></tr>' for c in classes)
        scores_html = (f"<p>Validation mean IoU: <b>{f(best.get('val_miou'))}</b> (epoch {result.best_epoch}); the "
                       f"starting model on the same area: {f(init.get('val_miou'))}.</p>"
                       f"<h2>Per class on the validation area</h2><table><tr><th class='l'>class</th>"
                       f"<th>starting model IoU</th><th>trained IoU</th></tr>{per_class}"
                       f"<tr><th class='l'>mean</th><th>{f(init.get('val_miou'))}</th>"
                       f"<th>{f(best.get('val_miou'))}</th></tr></table>")
    else:
        scores_html = "<p>No validation area was held out (validation share 0): no scores.</p>"
    names = [c.name for c in classes]
    confusion_html = ""
    for title, matrix in (("trained model", result.best_matrix), ("starting model", result.init_matrix)):
        if matrix is None:
            continue
        head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
        body = "".join(f'<tr><th class="l">{html.escape(n)}</th>'
                       + "".join(f"<td>{int(v):,}</td>" for v in r[:len(names)]) + "</tr>"
                       for n, r in zip(names, matrix))
        confusion_html += (f"<h2>Confusion matrix, {title}</h2><p>Rows: labels; columns: predicted (pixels).</p>"
                           f"<table><tr><th></th>{head}</tr>{body}</table>")
    epochs = "".join(f"<tr><td>{r['epoch']}</td><td>{f(r['train_loss'])}</td><td>{f(r.get('val_miou'))}</td>"
                     f"<td>{r['seconds']}</td></tr>" for r in result.history)
    doc = _page("Training report", scores_html + f"<h2>Curves</h2>{charts}" + confusion_html +
                "<h2>Epochs</h2><table><tr><th>epoch</th><th>training loss</th><th>validation mean IoU</th>"
                f"<th>seconds</th></tr>{epochs}</table>", details)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(doc)
