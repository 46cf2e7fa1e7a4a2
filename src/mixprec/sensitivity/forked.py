"""Measure one-group-quantized outputs without re-running the float prefix.

The model is traced once with torch.fx. A float pass executes the graph node by node; at the
first node of each group it forks: for every candidate it runs only the rest of the graph
(from the live float values) with that group's layers replaced. The prefix before a group is
computed once per batch instead of once per (group, candidate), so a table costs about
1 + sum_g C * suffix_g forward-equivalents instead of G * C.

In-place operations would let a fork write into the float values it shares, so the runner
executes their out-of-place forms (``x += y`` -> ``x + y``, ``relu_`` -> ``relu``,
``inplace=True`` -> False); the numbers are the same.
"""
from __future__ import annotations

import copy
import inspect
import operator
from typing import Any, Callable, Iterable

import torch
from torch import fx, nn

from ..joins import fx_clash_hint, graph_module

_OUT_OF_PLACE = {operator.iadd: operator.add, operator.isub: operator.sub, operator.imul: operator.mul,
                 operator.itruediv: operator.truediv, operator.ifloordiv: operator.floordiv,
                 operator.imod: operator.mod, operator.ipow: operator.pow, operator.iand: operator.and_,
                 operator.ior: operator.or_}


class NotTraceable(Exception):
    pass


# torch.fx's errors on common code, in the user's terms (the error itself follows)
FX_FAILURES = {"cannot be used as inputs to control flow": "the forward branches or loops on a tensor's value, "
                                                          "which torch.fx cannot trace; ",
               "Proxy object cannot be iterated": "the forward iterates over a tensor (a loop over it, or *args "
                                                  "made of it), which torch.fx cannot trace; "}


class ForkedForward:
    def __init__(self, model: nn.Module, layer_macs: dict[str, int] | None = None, example: Any = None):
        try:
            self.graph_module = graph_module(model, example)
        except Exception as exc:  # fx raises many kinds of errors on data-dependent code
            clash = fx_clash_hint(model)
            first = str(exc).splitlines()[0] if str(exc) else ""
            what = next((w for phrase, w in FX_FAILURES.items() if phrase in first), "")
            raise NotTraceable(f"{what}{type(exc).__name__}: {first}"
                               + (f" ({clash} to have it traced)" if clash else "")) from exc
        self.model = model
        self.nodes = list(self.graph_module.graph.nodes)
        self.index = {node: i for i, node in enumerate(self.nodes)}
        self.last_use = {}
        for i, node in enumerate(self.nodes):
            for used in node.all_input_nodes:
                self.last_use[used] = i
        self.modules = dict(self.graph_module.named_modules())
        self._safe_modules: dict[str, nn.Module] = {}
        self.signature = inspect.signature(model.forward)
        self.placeholders = [n for n in self.nodes if n.op == "placeholder"]
        calls: dict[str, int] = {}
        for n in self.nodes:
            if n.op == "call_module":
                calls[n.target] = calls.get(n.target, 0) + 1
        macs = layer_macs or {}
        self.node_macs = [macs.get(n.target, 0) / calls[n.target] if n.op == "call_module" else 0.0
                          for n in self.nodes]
        self.full_macs = sum(self.node_macs)
        self.executed_macs = 0.0  # MACs (per sample) of every layer call executed, forks included

    def first_node(self, layers: Iterable[str]) -> int:
        """Index of the first node calling any of ``layers`` (the group's fork point)."""
        layers = set(layers)
        for i, node in enumerate(self.nodes):
            if node.op == "call_module" and node.target in layers:
                return i
        from ..errors import ModelError
        raise ModelError(f"layer(s) {sorted(layers)} are never called by the model's forward (as torch.fx traced it): "
                         "there is nothing of them to measure. Leave them in float: exclude=[...] in Python, "
                         "--exclude NAME on the command line (e.g. a head used only in training)")

    def _bind(self, inputs: Any) -> dict[fx.Node, Any]:
        if isinstance(inputs, dict):
            bound = self.signature.bind_partial(**inputs)
        elif isinstance(inputs, (tuple, list)):
            bound = self.signature.bind_partial(*inputs)
        else:
            bound = self.signature.bind_partial(inputs)
        env = {}
        for node in self.placeholders:
            name = node.target.lstrip("*")  # fx names a forward's *args and **kwargs '*args' and '**kwargs'
            if name in bound.arguments:
                env[node] = bound.arguments[name]
            elif node.args:
                env[node] = node.args[0]
            else:
                env[node] = None
        return env

    def _module(self, target: str, overrides: dict[str, nn.Module]) -> nn.Module:
        if target in overrides:
            return overrides[target]
        module = self.modules[target]
        if getattr(module, "inplace", False):
            if target not in self._safe_modules:
                safe = copy.copy(module)
                safe.inplace = False
                self._safe_modules[target] = safe
            return self._safe_modules[target]
        return module

    def _execute(self, i: int, env: dict, overrides: dict[str, nn.Module]) -> Any:
        node = self.nodes[i]
        args = fx.node.map_arg(node.args, lambda n: env[n])
        kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n])
        if node.op == "call_module":
            self.executed_macs += self.node_macs[i]
            return self._module(node.target, overrides)(*args, **kwargs)
        if node.op == "call_function":
            fn = _OUT_OF_PLACE.get(node.target, node.target)
            if kwargs.get("inplace"):
                kwargs = {**kwargs, "inplace": False}
            return fn(*args, **kwargs)
        if node.op == "call_method":
            name = node.target
            if name.endswith("_") and not name.startswith("_") and hasattr(args[0], name[:-1]):
                name = name[:-1]
            return getattr(args[0], name)(*args[1:], **kwargs)
        if node.op == "get_attr":
            value = self.graph_module
            for part in node.target.split("."):
                value = getattr(value, part)
            return value
        raise RuntimeError(f"unexpected fx node {node.op}")

    def _run(self, start: int, env: dict, overrides: dict[str, nn.Module], free: bool) -> Any:
        for i in range(start, len(self.nodes)):
            node = self.nodes[i]
            if node.op == "output":
                return fx.node.map_arg(node.args[0], lambda n: env[n])
            if node.op == "placeholder":
                continue
            env[node] = self._execute(i, env, overrides)
            if free:
                for used in node.all_input_nodes:
                    if self.last_use.get(used) == i:
                        del env[used]
        raise RuntimeError("graph has no output node")

    @torch.no_grad()
    def forward(self, inputs: Any) -> Any:
        """The float model's output (out-of-place ops), counted in executed MACs."""
        return self._run(0, self._bind(inputs), {}, free=True)

    @torch.no_grad()
    def forks(self, inputs: Any, fork_points: dict[int, list[tuple[Any, Callable[[], dict[str, nn.Module]]]]],
              on_output: Callable[[Any, Any], None], checkpoint: tuple[int, dict] | None = None) -> tuple[int, dict]:
        """One float pass over ``inputs``; at node index i, for every (key, make_overrides) in
        ``fork_points[i]``, run the rest of the graph with those modules and call on_output(key, output).

        ``checkpoint`` = (index, live float values) from an earlier call resumes the float pass there
        instead of at the input; the returned checkpoint is where this pass stopped."""
        start, env = (0, self._bind(inputs)) if checkpoint is None else (checkpoint[0], dict(checkpoint[1]))
        if fork_points and min(fork_points) < start:
            start, env = 0, self._bind(inputs)  # a fork before the checkpoint: start over
        for i in range(start, len(self.nodes)):
            for key, make_overrides in fork_points.get(i, ()):
                on_output(key, self._run(i, dict(env), make_overrides(), free=True))
            node = self.nodes[i]
            if node.op in ("output", "placeholder"):
                continue
            if i > max(fork_points, default=-1):
                return i, env  # nothing left to fork: the rest of the float pass is not needed
            env[node] = self._execute(i, env, {})
            for used in node.all_input_nodes:
                if self.last_use.get(used) == i:
                    del env[used]
        return len(self.nodes), env
