"""A plan: the candidate chosen for every quantizer group, plus metadata. Plain, versioned JSON."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .atomic import write_json_atomic  # noqa: F401  (imported from here by older code)
from .candidates import parse_candidate
from .errors import MixprecError, PlanError
from .groups import ModelGroups, quantizable_layers

PLAN_FORMAT = "mixprec-plan"
PLAN_VERSION = 1


@dataclass
class Plan:
    """A candidate for every quantizer group (``assignments``: group -> candidate; ``groups``: group -> layers),
    the layers left float and what made it (``metadata``: search, budgets, predicted costs, the guard's decision,
    the rounding it was measured with). ``save(path)`` writes plan.json; ``Plan.load(path)`` reads one back;
    ``Plan.uniform(groups, candidate)`` puts every group on one candidate."""
    assignments: dict[str, str]  # group name -> candidate name
    groups: dict[str, list[str]]  # group name -> layer names
    excluded: list[str] = field(default_factory=list)  # layers left in float
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self.check_assignments()
        for group, cand in self.assignments.items():
            self.assignments[group] = parse_candidate(cand).name
        seen: dict[str, str] = {layer: "excluded" for layer in self.excluded}
        for group, layers in self.groups.items():
            for layer in layers:
                if layer in seen:
                    raise PlanError(f"layer {layer!r} is in two groups: {seen[layer]!r} and {group!r}")
                seen[layer] = group

    @classmethod
    def uniform(cls, groups: ModelGroups, candidate: str, metadata: dict | None = None) -> "Plan":
        """Every group on ``candidate``, except pinned groups, which keep their pin. ``groups``: the
        ModelGroups of discover_groups (``analysis.model_groups``); a plan's own ``groups`` dict (group ->
        layer names) is taken too, with nothing pinned or excluded, and so is a Plan (its groups and excluded
        layers)."""
        name = parse_candidate(candidate).name
        excluded = groups.excluded if isinstance(groups, Plan) else []
        groups = groups.groups if isinstance(groups, Plan) else groups
        if isinstance(groups, dict) and _is_names(list(groups)) and all(_is_names(v) for v in groups.values()):
            return cls({g: name for g in groups}, {g: list(v) for g, v in groups.items()}, list(excluded),
                       {"kind": "uniform", "candidate": name, **(metadata or {})})
        if not isinstance(groups, ModelGroups):
            raise PlanError(f"Plan.uniform takes the ModelGroups of discover_groups(model, example) (or "
                            f"analysis.model_groups), or a plan's groups dict, got {type(groups).__name__}")
        return cls({g.name: g.pinned or name for g in groups},
                   {g.name: list(g.layer_names) for g in groups},
                   [l.name for l in groups.excluded],
                   {"kind": "uniform", "candidate": name, **(metadata or {})})

    def pin(self, groups: ModelGroups) -> list[str]:
        """Put every pinned group of ``groups`` (--pin) on its pin: the plan's groups that hold its layers (the
        same group where the plan was made for these groups; a plan written per layer too); returns what
        changed, one line each."""
        changed = []
        owner = {layer: name for name, layers in self.groups.items() for layer in layers}
        for g in groups:
            if not g.pinned:
                continue
            for name in sorted({owner[layer] for layer in g.layer_names if layer in owner}):
                if self.assignments.get(name) != g.pinned:
                    changed.append(f"group {name}: {self.assignments.get(name)} in the plan, {g.pinned} by its pin")
                    self.assignments[name] = g.pinned
        if changed:
            self.metadata["pinned"] = changed
        return changed

    def layer_candidates(self) -> dict[str, str]:
        if any(g not in self.assignments for g in self.groups):  # edited after construction: said, not a KeyError
            self.check_assignments()
        return {layer: self.assignments[g] for g, layers in self.groups.items() for layer in layers}

    def check_assignments(self) -> None:
        """Every group assigned and every assignment a group's, as at construction: a plan whose ``assignments``
        were edited afterwards (a mistyped group name would otherwise be ignored) is a PlanError."""
        missing = sorted(set(self.groups) - set(self.assignments))
        extra = sorted(set(self.assignments) - set(self.groups))
        if missing or extra:
            raise PlanError(f"plan assignments do not match its groups: missing {missing[:5]}, unknown {extra[:5]} "
                            f"(its groups: {sorted(self.groups)[:6]}{'...' if len(self.groups) > 6 else ''}; a tied "
                            "group is named by its layers, e.g. 'a.{q,k,v}')")

    def model_layers(self, model) -> dict:
        """The model's layers this plan names (name -> module); a name the model lacks is a PlanError."""
        self.check_assignments()
        layers = quantizable_layers(model)
        unknown = sorted(set(self.layer_candidates()) - set(layers))
        if unknown:
            raise PlanError(f"the plan names {len(unknown)} layer(s) the model does not have, e.g. {unknown[:3]}; "
                            f"was it made for another model?{_prefix_hint(unknown, layers)}")
        return {name: layers[name] for name in self.layer_candidates()}

    def check_covers(self, model, verbose: bool = False) -> None:
        """Every layer of ``model`` mixprec quantizes is one of the plan's or one it excludes (``model_layers``
        checks the other direction). A plan mixprec made (solve, a front, Plan.uniform) named every layer of the
        model it was made for: one it does not name here means another model (a smaller one of the same
        family), a PlanError. A plan written by hand may name a few layers: the others stay float, said in a
        note."""
        layers = quantizable_layers(model)
        unnamed = sorted(set(layers) - set(self.layer_candidates()) - set(self.excluded))
        if not unnamed:
            return
        if "kind" in self.metadata or "front_point" in self.metadata:
            raise PlanError(f"the model has {len(unnamed)} layer(s) the plan does not name, e.g. {unnamed[:3]}; was it "
                            "made for another model? (a plan that leaves layers float lists them under \"excluded\", "
                            "as --exclude writes it)")
        from .errors import PlanNote, notify
        notify(f"{len(unnamed)} layer(s) of the model are not in the plan and stay float (e.g. {unnamed[:3]})", verbose,
               stacklevel=4, category=PlanNote)

    def to_dict(self) -> dict[str, Any]:
        """The plan as plan.json holds it (format, version, assignments, groups, excluded layers, metadata)."""
        return {"format": PLAN_FORMAT, "version": PLAN_VERSION,
                "assignments": dict(self.assignments), "groups": {k: list(v) for k, v in self.groups.items()},
                "excluded": list(self.excluded), "metadata": self.metadata}

    @classmethod
    def from_dict(cls, data: Any, source: str = "plan") -> "Plan":
        """The plan ``data`` (to_dict's) holds; a PlanError, naming ``source``, where it is not one."""
        if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT:
            raise PlanError(f"{source} is not a mixprec plan (no \"format\": \"{PLAN_FORMAT}\")")
        version = data.get("version")
        if type(version) is not int or version != PLAN_VERSION:
            raise PlanError(f"{source} has plan version {version!r}; this mixprec reads version {PLAN_VERSION}")
        try:
            assignments, groups = data["assignments"], data["groups"]
            excluded, metadata = data.get("excluded", []), data.get("metadata", {})
        except KeyError as exc:
            raise PlanError(f"{source} is malformed: no {exc.args[0]!r}") from exc
        if not isinstance(assignments, dict) or not all(isinstance(v, str) for v in assignments.values()):
            raise PlanError(f"{source} is malformed: 'assignments' must map group names to candidate strings")
        if not isinstance(groups, dict) or not all(_is_names(v) for v in groups.values()):
            raise PlanError(f"{source} is malformed: 'groups' must map group names to lists of layer names")
        if not _is_names(excluded) or not isinstance(metadata, dict):
            raise PlanError(f"{source} is malformed: 'excluded' must be a list of layer names, 'metadata' a dict")
        for group, candidate in assignments.items():  # a hand-edited candidate: named with its file and group here
            try:
                parse_candidate(candidate)
            except MixprecError as exc:
                raise PlanError(f"{source}: group {group!r}: {exc}") from exc
        return cls(dict(assignments), {k: list(v) for k, v in groups.items()}, list(excluded), dict(metadata))

    def save(self, path: str | os.PathLike) -> Path:
        """Write plan.json at ``path`` (atomically: the old file or the new one, never a torn one)."""
        path = Path(path)
        write_json_atomic(path, self.to_dict())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Plan":
        """The plan written at ``path`` (by save, or by `mixprec solve`); a clear error where it is none."""
        path = Path(path)
        if not path.is_file():
            raise PlanError(f"plan file not found: {path}")
        try:
            data = json.loads(path.read_bytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise PlanError(f"{path} is not valid JSON (UTF-8), so not a plan file ({exc}); give the plan.json that "
                            "`mixprec solve` wrote") from exc
        return cls.from_dict(data, str(path))


def _is_names(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _prefix_hint(unknown: list[str], layers) -> str:
    """Where the plan's layers are the model's under a name prefix added or dropped (a model loaded with hf:
    names its layers ``lm.<name>``; one built in Python, ``<name>``), a hint saying which."""
    names = set(layers)
    for name in unknown:
        for layer in names:
            if layer.endswith("." + name):
                prefix = layer[:-len(name)]
                if all(prefix + n in names for n in unknown):
                    return (f" Its layers are this model's under the prefix {prefix!r} (e.g. {prefix + name!r}): "
                            "it was made for the same network named another way (an hf: model names its layers "
                            "'lm.<name>', one built in Python '<name>'); solve again on the model as loaded here")
            if name.endswith("." + layer):
                prefix = name[:-len(layer)]
                if all(n.startswith(prefix) and n[len(prefix):] in names for n in unknown):
                    return (f" Its layers are this model's with the prefix {prefix!r} (e.g. {name!r} is {layer!r} "
                            "here): it was made for the same network named another way (an hf: model names its "
                            "layers 'lm.<name>', one built in Python '<name>'); solve again on the model as loaded "
                            "here")
        break  # one name decides: the hint holds for all of them or for none
    return ""


def plan_point_counts(assignments: dict[str, str], groups: dict[str, list[str]],
                      point_counts: dict[str, dict[str, str]]) -> dict[str, str]:
    """Points per channel of every layer a plan puts on a multipoint candidate (what apply needs and
    what the plan's costs assume): layer -> digits, from the analysis's candidate -> layer -> digits."""
    return {layer: point_counts[cand][layer] for g, cand in assignments.items() if cand in point_counts
            for layer in groups[g]}


def applied_with(assignments: dict[str, str], groups: dict[str, list[str]], joins: bool,
                 point_counts: dict[str, dict[str, str]]) -> dict[str, Any]:
    """The metadata a plan of an analysis is applied with, as it was measured: its join quantizers (``joins``) and
    the point counts of its multipoint layers (the ones its costs assume)."""
    out: dict[str, Any] = {"joins": True} if joins else {}
    counts = plan_point_counts(assignments, groups, point_counts or {})
    if counts:
        out["points"] = counts
    return out
