"""svgplot: report.html's plots without a plotting library."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from modelport import svgplot


def test_nice_ticks_are_round_and_cover_the_range() -> None:
    assert svgplot.nice_ticks(-7.2, -4.9) == [-7.0, -6.5, -6.0, -5.5, -5.0]
    assert svgplot.nice_ticks(0, 23) == [0, 5, 10, 15, 20]
    assert svgplot.nice_ticks(3, 3) == [3.0, 3.2, 3.4, 3.6, 3.8, 4.0]  # a flat range still gets an axis


def test_figure_is_valid_svg_with_every_series_inside_its_panel() -> None:
    hist = svgplot.Panel("fp32", "log10 max abs error", "cases",
                         [svgplot.Series("ort", [-7.0, -6.5, -6.0], [3.0, 1.0], step=True)], vline=(-5.0, "gate 1e-05"))
    cos = svgplot.Panel("q4 <&>", "case", "1 − cosine",
                        [svgplot.Series("node", [0.0, 1.0, 2.0], [1e-12, 0.05, 0.0], join=True)], log_y=True,
                        hline=(0.12, "gate cos 0.88"))
    svg = svgplot.figure("title", [hist, cos, hist, cos], cols=3)
    root = ET.fromstring(svg)  # well-formed, the "<&>" escaped
    assert (root.get("width"), root.get("height")) == (str(3 * svgplot.PANEL_W), str(svgplot.TITLE_H + 2 * svgplot.PANEL_H))
    ns = "{http://www.w3.org/2000/svg}"
    labels = [t.text for t in root.iter(ns + "text")]
    assert {"q4 <&>", "gate 1e-05", "gate cos 0.88", "1e-12", "1e0"} <= set(labels)
    for dot in root.iter(ns + "circle"):  # a zero on the log axis sits on the axis floor, inside the plot area
        x, y = float(dot.get("cx")), float(dot.get("cy"))
        row, col = int((y - svgplot.TITLE_H) // svgplot.PANEL_H), int(x // svgplot.PANEL_W)
        top = svgplot.TITLE_H + row * svgplot.PANEL_H + svgplot.TOP
        left = col * svgplot.PANEL_W + svgplot.LEFT
        assert top <= y <= top + svgplot.PANEL_H - svgplot.TOP - svgplot.BOTTOM
        assert left <= x <= left + svgplot.PANEL_W - svgplot.LEFT - svgplot.RIGHT
