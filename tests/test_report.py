import base64
import html
import io
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from scipy.stats import spearmanr

from mixprec.costs import CostTables
from mixprec.errors import SpecError
from mixprec.report import NOT_MEASURED, write_report
from mixprec.sensitivity.table import SensitivityTable

CANDIDATES = ["w4a8", "w8a8", "w16a16"]
BOPS_PER_GROUP = {"w4a8": 32e6, "w8a8": 64e6, "w16a16": 256e6}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_table(groups: list[str], values=None) -> SensitivityTable:
    if values is None:  # lower bits hurt more; later groups are more sensitive
        rows = np.arange(1, len(groups) + 1)[:, None]
        values = rows * np.array([[1e-2, 1e-4, 1e-6]])
    return SensitivityTable(list(groups), list(CANDIDATES), values, "sqnr")


def make_pareto(table: SensitivityTable, model: str = "toy") -> dict:
    """Front: point i puts the i most sensitive groups on w8a8, the rest on w4a8; cheapest first."""
    groups, col = table.groups, {c: j for j, c in enumerate(table.candidates)}
    points = []
    for i in range(len(groups) + 1):
        assignments = {g: ("w8a8" if k >= len(groups) - i else "w4a8") for k, g in enumerate(groups)}
        points.append(plan_entry(table, assignments, col))
    uniform = {c: plan_entry(table, {g: c for g in groups}, col) for c in CANDIDATES}
    for entry in uniform.values():
        del entry["assignments"]
    return {"kind": "bops", "metric": "sqnr", "model": model, "points": points, "uniform": uniform,
            "reference": None, "groups": {g: [f"{g}.conv", f"{g}.bn"] for g in groups}, "excluded": ["head"]}


def plan_entry(table, assignments, col) -> dict:
    rows = {g: i for i, g in enumerate(table.groups)}
    return {"costs": {"bops": sum(BOPS_PER_GROUP[c] for c in assignments.values()),
                      "bytes": sum(1000.0 * CANDIDATES.index(c) + 500 for c in assignments.values())},
            "predicted_sensitivity": float(sum(table.values[rows[g], col[c]] for g, c in assignments.items())),
            "assignments": dict(assignments), "measured": None}


def measure(pareto: dict, front: list[float], reference: float = 81.0) -> dict:
    top1 = lambda v: {"name": "top1", "value": v, "higher_is_better": True}  # noqa: E731
    for point, value in zip(pareto["points"], front):
        point["measured"] = top1(value)
    pareto["uniform"]["w4a8"]["measured"] = top1(60.0)
    pareto["uniform"]["w8a8"]["measured"] = top1(80.8)
    pareto["reference"] = top1(reference)
    pareto["searches"] = [{"name": "greedy-pareto", "costs": dict(pareto["points"][2]["costs"]),
                           "predicted_sensitivity": pareto["points"][2]["predicted_sensitivity"] * 1.1,
                           "measured": top1(79.0), "evaluations": 7,
                           "assignments": dict(pareto["points"][2]["assignments"])}]
    return pareto


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def embedded_pngs(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    with Image.open(io.BytesIO(data)) as image:
        image.verify()
    with Image.open(io.BytesIO(data)) as image:
        return image.size


def selected_section(page: str) -> str:
    return page.split("<h2>Selected plan")[1].split("<h2>")[0]


def test_report_without_measurements(tmp_path):
    table = make_table(["conv1", "layer1.0", "layer2.0", "fc"])
    pareto = make_pareto(table)
    path = write_report(tmp_path / "out", pareto, table)
    out = tmp_path / "out"
    assert path == out / "report.html"
    assert (path.stat().st_mode & 0o044) == (0o644 & ~_umask() & 0o044)  # readable like any new file
    assert sorted(p.name for p in out.iterdir()) == ["heatmap.png", "pareto.png", "report.html"]
    for name in ("pareto.png", "heatmap.png"):
        width, height = png_size(out / name)
        assert 300 < width < 3000 and 200 < height < 3000
    page = path.read_text()
    assert "<h1>mixprec report: toy</h1>" in page and "<b>sqnr</b>" in page and "<b>bops</b>" in page
    # self-contained: both PNGs embedded byte for byte, linked by file name, nothing fetched from elsewhere
    assert embedded_pngs(page) == [(out / "pareto.png").read_bytes(), (out / "heatmap.png").read_bytes()]
    assert 'href="pareto.png"' in page and 'href="heatmap.png"' in page
    assert "http://" not in page and "https://" not in page and "<script" not in page and "<link" not in page
    # every front point is a row; costs in human units
    front = page.split("<h2>Plans on the front</h2>")[1].split("<h2>")[0]
    assert front.count("<tr") == 1 + len(pareto["points"])
    assert "128.00M" in front and "256.00M" in front and "2.00 KB" in front
    assert "<td>uniform w16a16</td><td class=\"num\">1.02G</td>" in page
    # no measurement: the middle point is selected, and the report says how to measure
    select = len(pareto["points"]) // 2
    assert f"Selected plan: #{select}" in page and "the middle point of the front" in page
    assert html.escape(NOT_MEASURED) in page and "Spearman" not in page
    section = selected_section(page)
    for group, cand in pareto["points"][select]["assignments"].items():
        value = table[group, cand]
        assert f"<td>{group}</td><td>{group}.conv, {group}.bn</td><td>{cand}</td><td class=\"num\">{value:.4g}</td>" \
            in section
    assert "left in float: head" in section


def test_report_with_measurements_picks_the_cheapest_near_the_reference(tmp_path):
    table = make_table(["conv1", "layer1.0", "layer2.0", "fc"])
    front = [70.0, 78.0, 80.5, 80.9, 81.0]  # 80.5 is the first within 1 % of 81.0
    pareto = measure(make_pareto(table), front)
    page = write_report(tmp_path, pareto, table).read_text()
    assert "Selected plan: #2" in page and "within 1% of the float" in page
    assert (tmp_path / "predicted_vs_measured.png").is_file()
    assert png_size(tmp_path / "predicted_vs_measured.png")[0] > 300
    width, height = png_size(tmp_path / "pareto.png")
    assert height > 600  # two panels: predicted and measured
    # Spearman over every measured plan: front, uniform w4a8 and w8a8, the search
    predicted = [p["predicted_sensitivity"] for p in pareto["points"]] + [
        pareto["uniform"]["w4a8"]["predicted_sensitivity"], pareto["uniform"]["w8a8"]["predicted_sensitivity"],
        pareto["searches"][0]["predicted_sensitivity"]]
    rho = spearmanr(predicted, front + [60.0, 80.8, 79.0])[0]
    assert rho < -0.8
    assert f"&rho; = {rho:.3f}</b> (n = 8 distinct plans" in page
    # a uniform plan that is also a front plan (same prediction, same measurement) counts once
    twice = measure(make_pareto(table), front)
    twice["uniform"]["w8a8"] = {**twice["uniform"]["w8a8"], "predicted_sensitivity": twice["points"][4][
        "predicted_sensitivity"], "measured": dict(twice["points"][4]["measured"])}
    page = write_report(tmp_path / "twice", twice, table).read_text()
    assert "(n = 7 distinct plans" in page
    assert NOT_MEASURED not in page
    assert "greedy-pareto" in page and ">-11<" in page  # the search row, and a front point's drop vs float
    assert len(embedded_pngs(page)) == 3
    # nothing within 1 % of the reference: the best measured plan
    pareto = measure(make_pareto(table), front, reference=95.0)
    page = write_report(tmp_path / "far", pareto, table).read_text()
    assert "Selected plan: #4" in page and "the plan with the best measured top1" in page


def test_explicit_select_and_cost_shares(tmp_path):
    table = make_table(["conv1", "fc"])
    pareto = make_pareto(table)
    bops = np.array([[BOPS_PER_GROUP[c] for c in CANDIDATES], [3 * BOPS_PER_GROUP[c] for c in CANDIDATES]])
    costs = CostTables(("conv1", "fc"), tuple(CANDIDATES), {"bops": bops, "bytes": np.ones((2, 3))},
                       {"bops": 0.0, "bytes": 0.0})
    page = write_report(tmp_path, pareto, table, costs=costs, select=0).read_text()
    assert "Selected plan: #0" in page and "Chosen as given: select=0" in page
    section = selected_section(page)
    assert "32.00M (25.0%)" in section and "96.00M (75.0%)" in section  # all w4a8: fc costs 3x conv1
    assert section.count("(50.0%)") == 2  # bytes, equal per group
    other = CostTables(("conv1", "other"), tuple(CANDIDATES), {"bops": bops}, {"bops": 0.0})
    with pytest.raises(SpecError, match="cost tables and the sensitivity table list different groups"):
        write_report(tmp_path, pareto, table, costs=other)


def _grey_pixels(path) -> int:
    with Image.open(path) as image:
        return int((np.asarray(image.convert("RGB")) == (217, 217, 217)).all(axis=-1).sum())


def test_heatmap_shows_infinite_and_missing_entries_as_not_allowed(tmp_path):
    groups = ["conv1", "layer1.0", "fc"]
    values = np.array([[1e-2, 0.0, 1e-6], [np.inf, 2e-4, 3e-6], [5e-2, np.nan, 1e-5]])
    table = make_table(groups, values)
    pareto = make_pareto(make_table(groups))
    for p in pareto["points"]:  # the plans avoid the inf and NaN entries
        p["assignments"] = {g: ("w16a16" if g != "conv1" else "w8a8") for g in groups}
    write_report(tmp_path / "bad", pareto, table)
    assert png_size(tmp_path / "bad" / "heatmap.png")[1] > 200
    assert _grey_pixels(tmp_path / "bad" / "heatmap.png") > 2000  # two hatched grey cells
    write_report(tmp_path / "good", pareto, make_table(groups))
    assert _grey_pixels(tmp_path / "good" / "heatmap.png") < 100  # only anti-aliased text edges
    page = (tmp_path / "bad" / "report.html").read_text()
    assert '<td>conv1</td><td>conv1.conv, conv1.bn</td><td>w8a8</td><td class="num">0</td>' in page


def test_three_hundred_groups(tmp_path):
    groups = [f"model.layers.{i}.mlp.down_proj" for i in range(300)]
    table = make_table(groups)
    pareto = make_pareto(table, model="smollm2")
    pareto["points"] = pareto["points"][::30]  # 11 plans
    page = write_report(tmp_path, pareto, table).read_text()
    width, height = png_size(tmp_path / "heatmap.png")
    assert height > 300 * 12  # a readable row per group
    section = selected_section(page)
    assert all(f"<td>{g}</td>" in section for g in groups)


def test_strings_are_escaped(tmp_path):
    groups = ["<b>bold</b>", "price$x$", "fc&co"]
    table = make_table(groups)
    pareto = make_pareto(table, model="<script>alert(1)</script>")
    page = write_report(tmp_path, pareto, table).read_text()
    assert "&lt;b&gt;bold&lt;/b&gt;" in page and "<b>bold</b>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script" not in page
    assert "<td>price$x$</td>" in page and "<td>fc&amp;co</td>" in page
    assert png_size(tmp_path / "heatmap.png")[0] > 200  # '$' in a label does not break matplotlib


@pytest.mark.parametrize("select", [5, -1, True])
def test_select_out_of_range(tmp_path, select):
    table = make_table(["conv1", "fc"])
    with pytest.raises(SpecError, match=r"out of range: pareto.json has 3 points, choose an index from 0 to 2"):
        write_report(tmp_path, make_pareto(table), table, select=select)
    assert not (tmp_path / "report.html").exists()


def test_input_that_does_not_fit_is_a_spec_error(tmp_path):
    table = make_table(["conv1", "fc"])
    other = make_pareto(make_table(["conv1", "layer9"]))
    with pytest.raises(SpecError, match=r"groups not in the table: 'layer9'.*come from different runs"):
        write_report(tmp_path, other, table)
    pareto = make_pareto(table)
    pareto["points"][1]["assignments"]["fc"] = "w2a8"
    with pytest.raises(SpecError, match=r"candidates not in the table: 'w2a8'"):
        write_report(tmp_path, pareto, table)
    for key in ("points", "kind"):
        broken = make_pareto(table)
        del broken[key]
        with pytest.raises(SpecError, match=f"pareto.json has no '{key}'"):
            write_report(tmp_path, broken, table)
    pareto = make_pareto(table)
    pareto["kind"] = "latency_ms"
    with pytest.raises(SpecError, match="no finite 'latency_ms' cost"):
        write_report(tmp_path, pareto, table)
    pareto = make_pareto(table)
    pareto["metric"] = "fisher"
    with pytest.raises(SpecError, match="different runs"):
        write_report(tmp_path, pareto, table)
    assert list(tmp_path.iterdir()) == []


def test_custom_kind_and_lazy_matplotlib(tmp_path):
    table = make_table(["conv1", "fc"])
    pareto = make_pareto(table)
    pareto["kind"] = "latency_ms"
    for i, p in enumerate(pareto["points"]):
        p["costs"]["latency_ms"] = 1.5 + i
    for p in pareto["uniform"].values():
        p["costs"]["latency_ms"] = 2.0
    page = write_report(tmp_path, pareto, table).read_text()
    assert "<b>latency_ms</b>" in page and ">2.5<" in page
    code = "import sys, mixprec.report; assert 'matplotlib' not in sys.modules, 'matplotlib imported eagerly'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_front_with_infinite_measurements_is_read_back_and_drawn_without_them(tmp_path):
    """A ruined plan's perplexity of inf is a measurement pareto keeps, written "inf" in pareto.json: the report
    reads it back, and draws the finite ones (all infinite: a page all the same)."""
    import json
    table = make_table(["conv1", "layer1.0", "layer2.0", "fc"])
    ppl = lambda v: {"name": "ppl", "value": v, "higher_is_better": False}  # noqa: E731
    pareto = make_pareto(table)
    for point, value in zip(pareto["points"], ["inf", 40.0, 35.0, 33.0, 32.0]):
        point["measured"] = ppl(value)
    pareto["reference"] = ppl(31.0)
    (tmp_path / "some").mkdir()
    page = write_report(tmp_path / "some", json.loads(json.dumps(pareto)), table).read_text()
    assert "Selected plan" in page and len(embedded_pngs(page)) == 3
    for point in pareto["points"]:
        point["measured"] = ppl("inf")
    pareto["reference"] = ppl("inf")
    page = write_report(tmp_path / "all", pareto, table).read_text()
    assert len(embedded_pngs(page)) == 3
