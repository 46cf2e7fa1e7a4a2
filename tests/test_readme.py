"""The README's Python example, run exactly as written: the documented API cannot drift."""
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    section = README.read_text().split("## Python API", 1)[1]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    blocks = python_blocks()
    assert len(blocks) == 1, "the Python API section should hold one example"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)
    plan, front, result = namespace["plan"], namespace["front"], namespace["result"]
    assert plan.metadata["predicted_costs"]["bops"] <= plan.metadata["budgets"]["bops"] * (1 + 1e-12)
    assert len(front.plans) >= 2 and all(p.measured is not None for p in front.plans)
    assert result.evaluation is not None and result.costs["bytes"] <= result.plan.metadata["budgets"]["bytes"] * (1 + 1e-12)
    printed = capsys.readouterr().out
    assert "top1=" in printed  # the evaluation printed by the example
