"""Which stored guard decisions change when the mixed plan is judged against the best uniform rival only
(the plan it would be replaced by) instead of against every uniform rival within the budget.

The never-worse studies store, for every guarded point where the guard measured per-sample shares, the
paired z of the mixed (exact) plan against each rival on each divergence (``*_guard_z``), the rival the
guard returned (``*_guard_chose``), and the evaluation-split metric of the exact plan, the guarded plan and
the uniform plan at the budget. A decision can only change from a uniform rival to the mixed plan (the rule
is looser), and it does so for certain where the mixed plan is below the returned rival on every divergence
by more than the margin (every z < -margin). Where a z is 0 or within the margin, a divergence may have
abstained (both plans at 0, or too few samples differing), which the stored figures cannot tell: such
points are counted as undetermined, not as changed. Nothing is measured again; studies measured with the new
rule (``environment.guard_rule == "best_rival"``) are left out.

    python benchmarks/guard_best_rival.py [--margin 1]

Writes benchmarks/results/guard_best_rival.json and .md.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from run import RESULTS, replay_main  # noqa: E402

TABLES = ("sqnr", "around")


def points(margin: float) -> dict:
    changed, undetermined, kept, mixed, remeasured = [], [], 0, 0, []
    for path in sorted(RESULTS.glob("never_worse_*.json")):
        if path.stem.endswith(".partial"):
            continue
        study = json.loads(path.read_text())
        if study.get("environment", {}).get("guard_rule") == "best_rival":  # measured with the new rule itself
            remeasured.append(path.stem)
            continue
        lower_better = not (study.get("reference") or {}).get("higher_is_better", True)
        for row in study.get("rows", []):
            for table in TABLES:
                chose, z = row.get(f"{table}_guard_chose"), row.get(f"{table}_guard_z")
                if not chose or not z:
                    continue
                if chose == "mixed":
                    mixed += 1
                    continue
                zs = z.get(chose)
                if zs is None:
                    continue
                known = [v for v in zs if v is not None]
                if known and all(v < -margin for v in known):
                    exact, guarded, uniform = (row.get(f"{table}_exact"), row.get(f"{table}_guarded"),
                                               row.get("uniform"))
                    se = row.get("standard_error")
                    better = (exact < guarded) if lower_better else (exact > guarded)
                    worse_than_uniform = se is not None and ((exact - uniform) > se if lower_better
                                                             else (uniform - exact) > se)
                    changed.append({"study": path.stem, "table": table, "at": row["at"], "kind": row["kind"],
                                    "returned": chose, "z": zs, "exact": exact, "guarded": guarded,
                                    "uniform": uniform, "standard_error": se, "better_than_guarded": better,
                                    "worse_than_uniform_beyond_1se": worse_than_uniform})
                elif all(v <= 0 for v in known) and any(-margin <= v <= 0 for v in known):
                    undetermined.append({"study": path.stem, "table": table, "at": row["at"], "kind": row["kind"],
                                         "z": zs})
                else:
                    kept += 1
    return {"margin": margin, "changed": changed, "undetermined": undetermined, "kept_uniform": kept,
            "mixed_already": mixed, "remeasured": remeasured, "command": "python benchmarks/guard_best_rival.py"
            + (f" --margin {margin:g}" if margin != 1 else "")}


def markdown(r: dict) -> str:
    lines = ["## The guard judged against the best rival: stored decisions that change", "",
             f"From the never-worse studies' stored guard figures (`{r['command']}`; nothing measured again; "
             f"margin {r['margin']:g} standard error). "
             + ("Left out, as measured with the new rule itself: " + ", ".join(f"`{s}`" for s in r["remeasured"])
                + ". " if r.get("remeasured") else "")
             + "Guarded points whose decision stands: "
             f"{r['mixed_already']} returned the mixed plan already, {r['kept_uniform']} keep the uniform plan; "
             f"{len(r['undetermined'])} cannot be told from the stored figures (a divergence within the margin "
             "may have abstained); these change to the mixed plan:", "",
             "| study | point | returned before | z against it | exact (now returned) | guarded before | uniform | "
             "standard error |", "|---|---|---|---|---|---|---|---|"]
    for c in r["changed"]:
        lines.append(f"| {c['study']} ({c['table']}) | {c['kind']} of {c['at']} | {c['returned']} | "
                     + ", ".join(f"{v:.2f}" for v in c["z"] if v is not None)
                     + f" | {c['exact']:.2f} | {c['guarded']:.2f} | {c['uniform']:.2f} | "
                     + (f"{c['standard_error']:.2f}" if c["standard_error"] is not None else "") + " |")
    better = sum(c["better_than_guarded"] for c in r["changed"])
    worse = sum(c["worse_than_uniform_beyond_1se"] for c in r["changed"])
    lines += ["", f"{len(r['changed'])} decision(s) change; the plan now returned measures better than the one "
              f"returned before on the evaluation split in {better}; worse than the uniform plan at the budget by "
              f"more than one standard error in {worse}.", ""]
    return "\n".join(lines)


def main() -> int:
    return replay_main(__doc__, points, markdown, "guard_best_rival")


if __name__ == "__main__":
    raise SystemExit(main())
