"""The ``mixprec`` command line: each subcommand parses its arguments, makes one library call
(mixprec.analyze, Analysis.solve / pareto / report, quantize_plan) and prints."""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .analysis import HOLDOUT, Analysis, analyze
from .builtin import BUILTINS, get_builtin
from .cache import cache_dir
from .candidates import VALID_FORMS, parse_candidate, parse_candidates
from .costs import COST_KINDS, cost_tables, format_bytes, format_count
from .demo import DEMO_CANDIDATES
from .errors import MixprecError, PlanError, SpecError, error_line
from .export import DECODERS
from .export.cuda import DTYPES as CUDA_DTYPES
from .front import Front
from .groups import ModelGroups, is_torchscript
from .pipeline import check_plan_groups, quantize_plan
from .atomic import check_output_dir, check_output_file, finite_json, write_json_atomic
from .plan import Plan
from .profiles import PROFILE_TARGETS, PROFILES, profile_candidates
from .quantizers import RANGE_METHODS
from .rounding import ROUNDINGS, plan_rounding, rounding_config
from .run_directory import RunDirectory
from .sensitivity import metric_config
from .sensitivity.divergence import GUARD_CHOICES
from .solvers import MEASURED, SOLVERS
from .threads import choose_threads
from .specs import check_model_spec, is_builtin, load_eval, parse_device, prepare

_STARTED = time.time()  # files modified since are this command's (what an interruption kept)

DEFAULT_CANDIDATES = "fp32,w8a8,w8a16,w4a8,w4,w4g128,fp16"


def front_points(text: str) -> int:
    """argparse type: the plans of a front, at least 2 (its cheapest and its most expensive plan)."""
    value = positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"a front has at least 2 points (the cheapest and the most expensive plan), "
                                         f"got {value}; for one plan at one budget, use solve")
    return value


def _integer_at_least(low: int, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0 (a count that may be none)."""
    return _integer_at_least(0, text)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a count of samples, points, steps)."""
    return _integer_at_least(1, text)


def non_negative_float(text: str) -> float:
    """argparse type: a finite number >= 0 (a margin in standard errors)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (value >= 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


SAMPLES_HELP = "cap on calibration samples (default: all the data gives; a built-in model's own default)"
TIE_HELP = ("tie all layers matching this name pattern (a shell-style glob on whole layer names, e.g. "
            "'layer1.*.conv?'; see inspect) into one group (repeatable)")
EXCLUDE_HELP = "leave layers matching this pattern in float (repeatable)"
PIN_HELP = "fix layers matching PATTERN to candidate CAND, e.g. --pin conv1=w8a8 (repeatable)"
RANGE_HELP = {"weight": "weight range calibration (default mse: the range of least squared error; minmax, percentile)",
              "activation": "activation range calibration on the calibration data (default mse; minmax, percentile)"}


def _add_range_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weight-range", choices=RANGE_METHODS, default="mse", help=RANGE_HELP["weight"])
    p.add_argument("--activation-range", choices=RANGE_METHODS, default="mse", help=RANGE_HELP["activation"])


def _add_model_args(p: argparse.ArgumentParser, data_required: bool = False) -> None:
    p.add_argument("--model", required=True, help="built-in name (%s), file.py:function, package.module:function, "
                   "a TorchScript file, or hf:DIR[?dtype=fp32|bf16|fp16] (a Hugging Face checkpoint folder, read "
                   "offline)" % ", ".join(BUILTINS))
    p.add_argument("--data", required=data_required, help="calibration data: file.py:function, .npz or .pt, or "
                   "text:FILE[?windows=N&length=L] (token windows of a text file, with an hf: model; default for a "
                   "built-in model: its own calibration set)")
    p.add_argument("--calibration-samples", type=positive_int, default=None, help=SAMPLES_HELP)
    p.add_argument("--tie", action="append", default=[], metavar="PATTERN", help=TIE_HELP)
    p.add_argument("--exclude", action="append", default=[], metavar="PATTERN", help=EXCLUDE_HELP)
    p.add_argument("--pin", action="append", default=[], metavar="PATTERN=CAND", help=PIN_HELP)


def _require_data(args, why: str) -> None:
    """--data is needed for a model that is not built-in (``why``: what the batches are for); a mistyped model
    name is said as such, not as missing data."""
    if not args.data and not is_builtin(args.model):
        check_model_spec(args.model)
        raise SpecError(f"--data is required for a model that is not built-in ({why})")


def _setup(args, notes: bool = True) -> tuple[torch.nn.Module, list | None, Any, ModelGroups]:
    """Model, calibration batches, example input and groups for the model/data arguments; the groups' notes
    (weights left float, several outputs, conversions) printed, as every command that reads the model says them."""
    model, data, example, groups = prepare(args.model, args.data, args.calibration_samples, args.tie, args.exclude,
                                           args.pin, needs_data=getattr(args, "needs_data", True))
    if notes and os.environ.get("RANK", "0") == "0":  # one process of a torchrun says them
        _print_notes(groups.notes)
    return model, data, example, groups


def _print_groups(groups: ModelGroups) -> None:
    rows = [(g.name, ",".join(sorted({l.kind for l in g.layers})), len(g.layers), g.params,
             format_count(g.macs) if g.macs is not None else "?", g.tied_by or "", g.pinned or "")
            for g in groups]
    _table(["group", "kind", "layers", "params", "MACs", "tied by", "pinned"], rows)
    for layer in groups.excluded:
        print(f"excluded (float): {layer.name}")
    for note in groups.notes:
        print(f"note: {note}")


def _table(header: list[str], rows: list[tuple]) -> None:
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for k, r in enumerate(cells):
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if k == 0:
            print("  ".join("-" * w for w in widths))


def _candidates(args) -> list:
    if getattr(args, "profile", None):
        return profile_candidates(args.profile)
    return parse_candidates(args.candidates)


def cmd_inspect(args) -> int:
    if args.json == "-":  # the JSON alone on standard output for a script to read; the tables go to stderr
        import contextlib
        args.json = None
        with contextlib.redirect_stdout(sys.stderr):
            found = _inspect(args)
        print(json.dumps(finite_json(found), indent=2))
        return 0
    _inspect(args)
    return 0


def _inspect(args) -> dict:
    """inspect's tables printed (and its --json file written); returns what the JSON holds."""
    args.needs_data = False
    if args.json:
        check_output_file(args.json, "--json")
    model, _, example, groups = _setup(args, notes=False)  # inspect prints them below its table
    cands = _candidates(args)
    from .candidates import check_distinct
    check_distinct(cands, "mse")  # inspect prices names without a range suffix as analyze's default (mse) reads them
    pinned = [g.pinned for g in groups if g.pinned and g.pinned not in {c.name for c in cands}]
    costs = cost_tables(groups, [c.name for c in cands] + list(dict.fromkeys(pinned)), model)

    def uniform(kind: str, candidate: str) -> float:  # pinned groups keep their pin, as in solve's budgets
        return costs.total(kind, Plan.uniform(groups, candidate).assignments)
    total_params = sum(p.numel() for p in model.parameters())
    print(f"model {args.model}: {type(model).__name__}, {total_params:,} parameters, {len(groups.layers)} quantized "
          f"layers in {len(groups)} groups ({sum(1 for g in groups if len(g.layers) > 1)} tied)")
    if is_builtin(args.model):
        builtin = get_builtin(args.model)
        print(f"built-in: {builtin.description}\n  calibration: {builtin.calibration_source}\n"
              f"  evaluation: {builtin.evaluation_source}")
    if groups.example_shape is not None:
        print(f"example input {groups.example_shape}; MACs are per sample")
    _print_groups(groups)
    print()
    rows = []
    known = [c for c in cands if not c.multipoint]
    scripted = is_torchscript(model)  # its layers cannot get input quantizers: weight-only candidates only
    for c in known:
        rows.append((c.name + (" (not for TorchScript)" if scripted and c.quantizes_input else ""),
                     format_bytes(uniform("bytes", c.name)), format_count(uniform("bops", c.name)),
                     f"{uniform('bits_per_weight', c.name):.3f}"))
    print("cost of each uniform candidate (pinned groups keep their pin):")
    _table(["candidate", "bytes", "BOPs", "bits/weight"], rows)
    for c in cands:
        if c.multipoint:
            print(f"note: {c.name} is not listed: its cost depends on the points each channel takes, chosen on "
                  f"calibration data; `mixprec analyze --candidates ...,{c.name}` measures it")
    found = {"model": args.model, **groups.to_dict(), "uniform_costs": {
        c.name: {k: uniform(k, c.name) for k in COST_KINDS} for c in known}}
    if args.json:
        write_json_atomic(Path(args.json), found)
        print(f"wrote {args.json}")
    return found


def _rounding(args):
    """--rounding with --act-order and --rounding-iterations, as a rounding config (mixprec.rounding);
    None where --rounding was not given and has no default (solve, pareto: the analysis's rounding)."""
    if args.rounding is None:
        if getattr(args, "rounding_iterations", None) is not None:
            raise SpecError("--rounding-iterations is an option of --rounding adaround and --rounding brecq")
        if getattr(args, "act_order", None) is not None or getattr(args, "static_groups", False):
            raise SpecError("--act-order/--no-act-order and --static-groups are options of --rounding gptq; add it")
        return None
    options: dict[str, Any] = {}
    given = {"act_order": getattr(args, "act_order", None),  # --act-order / --no-act-order, None: not given
             "static_groups": getattr(args, "static_groups", False) or None}  # --static-groups, or not given
    for flag, value in given.items():
        if value is not None:
            if args.rounding != "gptq":
                raise SpecError(f"--{flag.replace('_', '-')} is an option of --rounding gptq")
            options[flag] = value
    if getattr(args, "rounding_iterations", None) is not None:
        if args.rounding not in ("adaround", "brecq"):
            raise SpecError("--rounding-iterations is an option of --rounding adaround and --rounding brecq")
        options["iterations"] = args.rounding_iterations
    return rounding_config(args.rounding, **options)


def _measure_rounding(args):
    """solve's and pareto's --rounding: its name where no switch of it was given (so that a run analysed with
    --rounding gptq --static-groups keeps its switches: Analysis._rounding), else its config; None: not given."""
    config = _rounding(args)
    return args.rounding if config is not None and config == rounding_config(args.rounding) else config


def _read_plan(args) -> None:
    """Exactly one of --plan and --uniform; the plan file read before the model loads (a missing or damaged one
    is said at once), kept as ``args.plan_read`` for :func:`_plan_of`."""
    if bool(args.plan) == bool(args.uniform):
        raise SpecError("give exactly one of --plan plan.json or --uniform CANDIDATE (e.g. --uniform w8a8)")
    args.plan_read = Plan.load(args.plan) if args.plan else None


def _plan_of(args, groups: ModelGroups, same_groups: bool = True) -> Plan:
    """--plan (made for this model's groups; ``same_groups=False``: any plan naming its layers, as export
    takes) or --uniform, with the --pin options applied and said."""
    read = getattr(args, "plan_read", None)
    plan = read if read is not None else Plan.load(args.plan) if args.plan else \
        Plan.uniform(groups, args.uniform, {"model": args.model})
    if same_groups:
        try:
            check_plan_groups(plan, groups)
        except SpecError as exc:
            missing = _run_grouping(plan, args)
            if not missing:
                raise
            raise SpecError(f"{exc} The plan's run ({plan.metadata['run']}) was analysed with {missing}, which this "
                            "command line does not give: add them") from None
    for change in plan.pin(groups):
        print(f"note: pin applied: {change}")
    return plan


def _run_grouping(plan: Plan, args) -> str:
    """The --tie/--exclude/--pin options of the run a plan was solved on that this command line lacks, as flags
    ("" where the plan names no run, or it is gone, or nothing lacks)."""
    import shlex
    run = plan.metadata.get("run")
    if not isinstance(run, str) or not (Path(run) / "run.json").is_file():
        return ""
    try:
        arguments = RunDirectory(run).arguments()
    except MixprecError:
        return ""
    flags = [f"--{option} {shlex.quote(str(value))}" for option in ("tie", "exclude", "pin")
             for value in (arguments.get(option) or []) if value not in (getattr(args, option, None) or [])]
    return " ".join(flags)


def _switch_flags(rounding) -> str:
    """The command-line flags of a rounding's switches set otherwise than by default ("--no-act-order
    --static-groups"); "" for None or a rounding at its defaults."""
    if rounding is None:
        return ""
    defaults = rounding_config(rounding.name).options()
    return " ".join(f"--{'' if v else 'no-'}{k.replace('_', '-')}" for k, v in rounding.options().items()
                    if isinstance(v, bool) and v != defaults.get(k))


def cmd_quantize(args) -> int:
    _read_plan(args)
    _require_data(args, "calibration batches")
    check_output_dir(args.out)
    rounding = _rounding(args)  # None: not given, the plan's own (as export)
    model, data, _, groups = _setup(args)
    plan = _plan_of(args, groups)
    chosen = plan_rounding(plan.metadata)  # a plan of an older mixprec: the defaults of its time
    chosen_with = plan.metadata.get("rounding")
    chosen_options = chosen.options() if chosen is not None else {}
    if rounding is None:
        if chosen_with is not None and chosen is None:  # a rounding this mixprec does not have: said, not nearest
            from .apply import note_plan_rounding
            note_plan_rounding(plan, "quantize")
        rounding = chosen or rounding_config("nearest")
        if rounding.name != "nearest":
            print(f"note: this plan was chosen with {rounding.name}-rounded weights: applied with {rounding.name} "
                  "(--rounding nearest applies it by nearest rounding instead)")
    elif chosen_with and (chosen_with != rounding.name or any(rounding.options().get(k) != v
                                                             for k, v in chosen_options.items())):
        flags = _switch_flags(chosen)
        print(f"note: this plan was chosen with {chosen_with}-rounded weights (its sensitivities and guard"
              + (f"; options {chosen_options}" if chosen_options else "") + f"); it is applied here with "
              f"{rounding.name} rounding (options {rounding.options()}): add --rounding {chosen_with}"
              f"{' ' + flags if flags else ''} to deploy what was measured")
    eval_spec = args.eval or (args.model if is_builtin(args.model) else None)
    evaluate = load_eval(eval_spec, args.model) if eval_spec else None
    if args.device and not args.stream:  # the model this command loaded is its own: moved, not copied
        from .streaming import place
        model = place(model, args.device)
    result = quantize_plan(model, plan, data, groups, weight_range=args.weight_range,
                           activation_range=args.activation_range, rounding=rounding,
                           rounding_checkpoint=cache_dir() / "rounding", device=args.device,
                           stream=args.stream, inplace=True)  # the float model is not needed again: one model's memory, not two
    out = result.save(args.out, evaluate, model=args.model, plan=plan.metadata.get("candidate", args.plan))
    costs, evaluation = result.costs, result.evaluation
    metric = "not evaluated (give --eval)" if evaluation is None else f"{evaluation.name} {evaluation.value:.6g}"
    print(f"{metric}; {format_bytes(costs['bytes'])}, {format_count(costs['bops'])} BOPs, "
          f"{costs['bits_per_weight']:.3f} bits/weight")
    print(f"wrote {out / 'model.pt'}, {out / 'plan.json'}, {out / 'result.json'}")
    return 0


def _init_distributed() -> int:
    """Under torchrun (WORLD_SIZE > 1), join the process group; returns this process's rank."""
    import os
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0
    if not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        local, gpus = int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()
        if backend == "nccl" and local >= gpus:  # each process takes the GPU of its local rank
            raise SpecError(f"torchrun started more processes on this machine than it has CUDA devices ({gpus}): "
                            f"local rank {local} has no GPU of its own; give --nproc_per_node {gpus} (one process a "
                            "GPU), or CUDA_VISIBLE_DEVICES= to shard over CPU processes instead")
        torch.distributed.init_process_group(backend=backend)
        if backend == "nccl":
            torch.cuda.set_device(local)
    return torch.distributed.get_rank()


ANALYZE_ARGS = ("model", "data", "calibration_samples", "tie", "exclude", "pin", "candidates", "profile", "metric",
                "around", "around_divergence", "rounding", "act_order", "static_groups", "eval", "weight_range",
                "activation_range", "chunk_size", "no_fx", "device", "out", "joins", "stream")


def _recorded_arguments(args) -> dict:
    """The analysis's arguments as its run directory records them: the files and folders that --model, --data and
    --eval name made absolute, so that solve, pareto and --resume load them from any working directory."""
    from .specs import absolute_spec
    arguments = {k: getattr(args, k, None) for k in ANALYZE_ARGS}
    for option in ("model", "data", "eval"):
        arguments[option] = absolute_spec(arguments[option])
    return arguments


def _metric(args):
    """--metric, or with --around CAND the around metric (the change of the output divergence when one
    group moves from the plan with every group on CAND)."""
    if not getattr(args, "around", None):
        if getattr(args, "around_divergence", "auto") != "auto":
            raise SpecError("--around-divergence chooses the divergence of --around, which is not given: add "
                            "--around CAND (the operating point, e.g. --around w4a8), or drop --around-divergence")
        if args.metric == "around":
            raise SpecError("--metric around measures around an operating point: give it as --around CAND (e.g. "
                            "--around w4a8: every group on w4a8, each moved alone to each candidate)")
        if args.metric not in _metric_names():
            raise SpecError(f"unknown sensitivity metric {args.metric!r}; metrics: {', '.join(_metric_names())}")
        return args.metric
    if getattr(args, "metric", "sqnr") not in (None, "sqnr"):
        hint = f"--around-divergence {args.metric}" if args.metric in ("kl", "sqnr") else "--around-divergence kl|sqnr"
        raise SpecError(f"--around measures its own metric (the change of an output divergence around the base "
                        f"plan), so --metric {args.metric} would be ignored: drop --metric, and choose the divergence "
                        f"with {hint}")
    divergence = getattr(args, "around_divergence", None) or "auto"
    model = getattr(args, "model", None)
    if divergence == "auto" and isinstance(model, str) and is_builtin(model) and get_builtin(model).output == "logits":
        divergence = "kl"  # a built-in classifier's logits (its calibration images come without their labels)
    return metric_config("around", base=parse_candidate(args.around).name, divergence=divergence)


_NOT_GIVEN = object()


def _typed_options(argv: list[str] | None, command: str) -> set[str] | None:
    """The options of ``command`` typed on this command line (None when unknown, e.g. called from Python)."""
    if argv is None:
        return None
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    for action in sub._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv))) - {"func"}


def cmd_analyze(args) -> int:
    if args.resume:
        run = RunDirectory(args.resume)
        given = {k: getattr(args, k, None) for k in ANALYZE_ARGS if k != "out"}
        typed = _typed_options(getattr(args, "argv", None), "analyze")
        defaults = vars(build_parser().parse_args(["analyze"]))
        # an option typed on the command line counts as given even at its default value
        defaults = {k: (_NOT_GIVEN if typed is not None and k in typed else defaults.get(k)) for k in given}
        saved = run.resume_arguments(given, defaults, args.trust_run)
        _say_trusted(run, args.trust_run, given)
        for key in ANALYZE_ARGS:
            if key in saved:
                setattr(args, key, saved[key])
        args.out = args.resume
    elif not args.model or not args.out:
        raise SpecError("give --model SPEC and --out RUN_DIR (or --resume RUN_DIR to continue a run)")
    if args.metric == "task" and not args.eval:  # refused before the run directory is written
        if not is_builtin(args.model):
            raise SpecError("--metric task measures the drop of your own metric: give --eval file.py:evaluate (a "
                            "function model -> metric), or use a label-free metric such as --metric sqnr")
        args.eval = args.model
        print(f"note: --metric task measures with {args.model}'s own evaluation (--eval {args.model})")
    check_output_dir(args.out)
    rank = _init_distributed()
    try:
        return _analyze(args, rank)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _analyze(args, rank: int) -> int:
    if args.metric != "roundoff":  # the data-free metric needs no calibration batches
        _require_data(args, "calibration batches")
    candidates, metric = _candidates(args), _metric(args)  # a mistyped one is refused before the model loads
    if rank == 0:
        print(f"torch threads: {args.torch_threads[0]} ({args.torch_threads[1]})")
    model, data, _, groups = _setup(args)
    device = torch.device(args.device)
    if device.type == "cuda" and torch.distributed.is_initialized():
        device = torch.device("cuda", torch.cuda.current_device())
    if not args.stream:  # the model this command loaded is its own: moved, not copied (one model's memory)
        from .streaming import place
        model = place(model, device)
    evaluate = load_eval(args.eval, args.model) if args.eval else None
    args.joins = _joins(args, model)  # recorded as resolved: a resumed run measures as this one did
    analysis = analyze(model, data or [], candidates, metric, args.out, groups=groups,
                       evaluate=evaluate, weight_range=args.weight_range, activation_range=args.activation_range,
                       chunk_size=args.chunk_size, use_fx=not args.no_fx, device=device, progress=rank == 0,
                       verbose=rank == 0, model_name=args.model, rounding=_rounding(args), joins=args.joins,
                       target=PROFILE_TARGETS.get(args.profile or ""), stream=args.stream,
                       arguments=_recorded_arguments(args))
    if rank != 0:
        return 0
    table, meta = analysis.table, analysis.table.metadata
    print(f"{table.metric} sensitivity of {len(table.groups)} groups x {len(table.candidates)} candidates in "
          f"{meta['seconds']:.1f} s"
          + (f", {meta['forward_equivalents']:.1f} forward-equivalents"
             f" ({_prefix_note(meta)})"
             if "forward_equivalents" in meta else ""))
    worst = sorted(range(len(table.groups)), key=lambda i: -float(np.nan_to_num(table.values[i].max(), nan=-1)))[:10]
    shown = "most sensitive groups" if len(worst) == len(table.groups) else \
        f"most sensitive {len(worst)} of {len(table.groups)} groups"
    _table([shown, *table.candidates], [(table.groups[i], *(f"{v:.3g}" for v in table.values[i])) for i in worst])
    print(f"wrote {Path(args.out) / 'sensitivity.json'} and sensitivity.csv"
          + (" (every group)" if len(worst) < len(table.groups) else ""))
    if evaluate is not None and table.metric != "task":
        from .sensitivity.trust import format_report
        print(f"trust report: measuring the real metric drop of every entry "
              f"({len(table.groups) * len(table.candidates)} evaluations; cached in {Path(args.out) / 'task'})")
        print(format_report(analysis.trust(evaluate, eval_name=args.eval)))
    return 0


def _joins(args, model) -> bool:
    """--joins / --no-joins, else mixprec.joins.default_joins for the profile's target (its note printed)."""
    if getattr(args, "joins", None) is not None:
        return bool(args.joins)
    if getattr(args, "stream", False):  # a streamed model is never traced whole
        return False
    from .joins import default_joins
    joins, note = default_joins(model, PROFILE_TARGETS.get(getattr(args, "profile", None) or ""), _candidates(args))
    if note:
        print(f"note: {note}")
    return joins


def _prefix_note(meta: dict) -> str:
    sharing = meta.get("prefix_sharing", "fx" if meta.get("forked") else "none")
    if sharing == "fx":
        return "prefix shared via torch.fx"
    reason = meta.get("fallback_reason")
    if sharing == "blocks":
        return "blocks before each group's answered from one float pass" + (
            f"; torch.fx did not trace the model: {reason}" if reason else "")
    return ("full forwards, one per entry (no float prefix shared): " + reason if reason
            else "full forwards (prefix sharing off)")


def _print_notes(notes) -> None:
    for note in notes:
        print(f"note: {note}")


def _add_guard_margin(p) -> None:
    p.add_argument("--guard-margin", type=non_negative_float, default=1.0, metavar="Z",
                   help="the mixed plan must beat the best uniform plan by more than Z standard errors of the paired "
                   "per-sample difference of each divergence on the calibration data, else the uniform plan is "
                   "returned (ties go to uniform; default 1; 0: any lower measurement wins)")


def _add_measure_rounding(p) -> None:
    p.add_argument("--rounding", choices=list(ROUNDINGS), default=None,
                   help="how the weights of measured plans (the guard's too) are rounded (default: as the analysis "
                   "measured, nearest unless analyze --rounding said otherwise); a learned rounding "
                   "(e.g. brecq) makes the measurements reconstruction-aware: each plan is measured after "
                   "reconstruction (solve --search refine: each probe too, and the sensitivities re-scaled from that)")
    p.add_argument("--rounding-iterations", type=positive_int, default=None, metavar="N",
                   help="adaround, brecq: optimisation steps per layer or block")


def _search_options(args) -> dict[str, Any]:
    """The chosen search's own options, as SOLVERS[search] takes them."""
    name = args.search
    if name == "mixquant":
        return {"qem": args.qem, "base": parse_candidate(args.base).name if args.base else None}
    if name in ("greedy", "bisection"):
        return {"low": parse_candidate(args.low).name if args.low else None}
    if name == "greedy-pareto":
        return {"path_search": args.path_search}
    if name == "refine":
        return {"rounds": args.rounds, "probes": args.probes}
    if name == "local":
        return {"evaluations": args.evaluations, "time_budget": args.time_budget}
    return {}


# solve's options that belong to one search, with their defaults: given to another search they would be ignored
SEARCH_OPTIONS = {"qem": ("mixquant", None), "base": ("mixquant", None), "low": ("greedy, bisection", None),
                  "path_search": ("greedy-pareto", "binary"), "rounds": ("refine", 2), "probes": ("refine", 16),
                  "evaluations": ("local", None), "time_budget": ("local", "1x")}


def _check_misplaced_options(args) -> None:
    """Refuse an option the chosen search (or --no-guard) would ignore: a user who forgot --search local would
    believe a measured search ran."""
    typed = _typed_options(getattr(args, "argv", None), "solve") if hasattr(args, "search") else None
    for option, (owners, default) in SEARCH_OPTIONS.items():
        value = getattr(args, option, default)
        given = value != default or (typed is not None and option in typed)  # typed at its default value too
        if given and args.search not in owners.split(", "):
            flag = "--" + option.replace("_", "-")
            raise SpecError(f"{flag} is an option of --search {owners.replace(', ', ' or ')}; this solve runs --search "
                            f"{args.search}, which does not use it: add --search {owners.split(', ')[0]}, or drop {flag}")
    search = getattr(args, "search", None)  # pareto has none: its --eval measures the front's plans
    measured = search in MEASURED or (search == "greedy-pareto" and getattr(args, "max_drop", None))
    if getattr(args, "eval", None) and search and not measured:
        raise SpecError(f"--eval is what a measured search measures plans with (--search greedy, bisection, refine, or "
                        f"greedy-pareto with --max-drop); --search {args.search} measures none with it (the guard and "
                        "the local search measure label-free divergences on the calibration data), so it would be "
                        "ignored: drop --eval (quantize --plan PLAN --eval SPEC measures the plan)")
    if getattr(args, "kind", None) and getattr(args, "budget", None):
        raise SpecError(f"--kind names the cost a search lowers when no --budget is given; with --budget "
                        f"{args.budget} the budget's kind is lowered: drop --kind")
    if args.no_guard:
        given = [flag for flag, value, default in (("--guard-margin", args.guard_margin, 1.0),
                                                   ("--guard-divergence", args.guard_divergence, "auto"))
                 if value != default]
        if given:
            raise SpecError(f"{' and '.join(given)} set{'s' if len(given) == 1 else ''} how the guard decides, and "
                            "--no-guard turns the guard off: drop one or the other")


def _say_trusted(run: RunDirectory, trust_run: bool, given: dict) -> None:
    """With --trust-run, say which code the run names and this command may run."""
    if trust_run and run.exists:
        for option, spec in run.code_specs().items():
            if not given.get(option):
                print(f"--trust-run: --{option} {spec}, as {run.path}/run.json names it, runs if a step measures "
                      "plans", flush=True)


def _load_run(args) -> Analysis:
    """Analysis.load with the specs named again on this command line (and --trust-run)."""
    specs = {"model": args.model, "data": args.data, "eval": args.eval if args.eval != "auto" else None}
    analysis = Analysis.load(args.run, specs, args.trust_run)
    _say_trusted(analysis.run, args.trust_run, specs)
    return analysis


def cmd_solve(args) -> int:
    check_output_file(args.out)
    _check_misplaced_options(args)
    analysis = _load_run(args)
    from .errors import BudgetNote, EvaluationNote
    with warnings.catch_warnings():  # the plan's notes hold them: printed once, with them
        warnings.filterwarnings("ignore", category=EvaluationNote)
        warnings.filterwarnings("ignore", category=BudgetNote)
        plan = analysis.solve(args.budget, args.search, candidates=args.candidates, cost_files=args.cost,
                              kind=args.kind, max_drop=args.max_drop, evaluate=args.eval, device=args.device,
                              rounding=_measure_rounding(args), guard=not args.no_guard,
                              guard_divergence=args.guard_divergence,
                              guard_margin=args.guard_margin, guard_holdout=args.guard_holdout, verbose=True,
                              **_search_options(args))
    meta = plan.metadata
    if not (meta.get("guard") or {}).get("measured") and not meta["measured"]:
        analysis.check_named(args.device)  # a --model/--data given is the run's, measured or not
    total, costs, budgets = meta["predicted_sensitivity"], meta["predicted_costs"], meta["budgets"]
    table, bytes_of = analysis.table, analysis.problem(args.candidates, args.cost).costs["bytes"]
    chosen = [(i, table.candidates.index(plan.assignments[g])) for i, g in enumerate(table.groups)]
    # a share of S is a share only of a positive total of non-negative entries (an --around table holds
    # changes from its base, which are negative where a move helps)
    shares = total > 0 and all(table.values[i, c] >= 0 for i, c in chosen)
    rows = []
    for i, c in chosen:
        rows.append((table.groups[i], table.candidates[c], f"{table.values[i, c]:.3g}",
                     f"{100 * table.values[i, c] / total:.1f}%" if shares else "-",
                     f"{100 * bytes_of[i, c] / max(costs['bytes'], 1e-300):.1f}%"))
    _table(["group", "candidate", "sensitivity", "share of S", "share of bytes"], rows)
    print(f"total {table.metric} sensitivity {meta['predicted_sensitivity']:.4g}; "
          + ", ".join(_cost_text(k, costs[k], budgets.get(k)) for k in costs))
    _print_notes(meta.get("notes", []))
    if meta.get("guard") and meta["guard"].get("chosen") == "mixed":
        print(f"guard ({meta['guard']['divergence']} on the calibration data): {meta['guard']['reason']}")
    if meta["measured"]:
        print(f"search {args.search}: {meta['evaluations']} plans measured; this plan: {meta['measured']['name']} "
              f"{meta['measured']['value']:.4g}")
    plan.save(args.out)
    print(f"wrote {args.out}; apply it with: {_quantize_hint(analysis, args, plan)}")
    return 0


def _quantize_hint(analysis: Analysis, args, plan: Plan | None = None) -> str:
    """The quantize command that applies the plan just written, quoted for a shell: the model and calibration data
    the run measured (a model that is not built-in needs its --data named), and the rounding the plan was chosen
    with."""
    import shlex
    arguments = analysis.run.arguments() if analysis.run is not None and analysis.run.exists else {}
    model = getattr(args, "model", None) or arguments.get("model") or analysis.model_name or "MODEL"
    data = getattr(args, "data", None) or arguments.get("data") or (None if is_builtin(model) else "DATA")
    rounding = plan_rounding(plan.metadata) if plan is not None else None
    flags = ""
    if rounding is not None and rounding.name != "nearest":
        switches = _switch_flags(rounding)
        flags = f" --rounding {rounding.name}" + (f" {switches}" if switches else "")
        iterations = rounding.options().get("iterations")
        if iterations is not None and iterations != rounding_config(rounding.name).options().get("iterations"):
            flags += f" --rounding-iterations {iterations}"
    # the run's --tie/--exclude/--pin: quantize discovers the groups again with them (and checks the plan's)
    grouping = "".join(f" --{option} {shlex.quote(str(value))}" for option in ("tie", "exclude", "pin")
                       for value in (arguments.get(option) or []))
    return (f"mixprec quantize --model {shlex.quote(str(model))}"
            + (f" --data {shlex.quote(str(data))}" if data else "") + grouping + flags
            + f" --plan {shlex.quote(str(args.out))} --out DIR")


def cmd_pareto(args) -> int:
    check_output_dir(args.out)
    _check_misplaced_options(args)
    analysis = _load_run(args)
    _print_notes(analysis.problem(args.candidates, args.cost).notes)
    base = analysis.table.metadata.get("around")
    if base:
        print(f"note: this run measured each group moved alone from uniform {base} (--around): its predictions hold "
              f"near that plan's cost and mispredict far from it, so a front over the whole range may collapse to few "
              "plans; for a whole front, analyze without --around (or with a base near each budget)")
    front = analysis.pareto(args.budget_kind, args.points, args.method,
                            evaluate=True if args.eval == "auto" else args.eval, candidates=args.candidates,
                            cost_files=args.cost, device=args.device, rounding=_measure_rounding(args),
                            guard=not args.no_guard, guard_divergence=args.guard_divergence,
                            guard_margin=args.guard_margin)
    if front.extra.get("guard_skipped"):
        print(f"note: {front.extra['guard_skipped']}")
    counts = front.extra.get("guard_replaced") or {}
    guard_s = front.extra.get("guard_seconds")
    print(f"{len(front.plans)} {'front' if counts.get('replaced') else 'non-dominated'} plans ({args.method}) in "
          f"{front.solve_seconds:.2f} s" + (f", the guard in {guard_s:.1f} s" if guard_s is not None else "")
          + ("; the uniform plans the guard put in measured better on the calibration "
                                            "data, and may predict more damage than a cheaper plan"
                                            if counts.get("replaced") else ""))
    solved = front.extra.get("solved", len(front.plans))  # non-dominated plans before the guard (and its merges)
    if solved < args.points:
        print(f"note: {args.points} evenly spaced budgets and the costs of the uniform candidates gave {solved} "
              "distinct plans: budgets between two steps of the costs give the same plan, and a plan no better than a "
              "cheaper one is dropped (more candidates, or a finer cost kind, give more steps)")
    if analysis.joins:
        print("note: the analysis has join quantizers (the int8 graph of ONNX Runtime): every plan keeps them, so "
              "the fp32 plan is not the float model (the reference is)")
    front.save(args.out)
    out, kind, reference = Path(args.out), front.kind, front.reference
    header = [kind, f"predicted {front.metric}"] + (["measured " + reference["name"]] if reference else [])
    _table(header + ["candidates used"],
           [(f"{p.costs[kind]:.6g}", f"{p.predicted_sensitivity:.4g}",
             *([f"{p.measured['value']:.4g}"] if reference else []),
             ",".join(sorted(set(p.assignments.values())))) for p in front.plans])
    guarded = [p.search.split("guard: ")[1] for p in front.plans if p.search and "guard: " in p.search]
    solved, replaced = counts.get("solved", len(front.plans)), counts.get("replaced", len(guarded))
    if replaced:  # said even where every replacement merged into another front plan
        print(f"guard: {replaced} of the {solved} plans solved measured no better than a uniform plan within their "
              f"cost on the calibration data and were replaced by it"
              + (f" ({'; '.join(sorted(set(guarded)))})" if guarded else "")
              + (f"; equal plans merged, {len(front.plans)} front plans remain" if solved != len(front.plans) else ""))
    inverted = front.better_when_cheaper()  # an inverted metric is said instead of the notes it would upset
    for cand in ([] if inverted else front.uniform_above_front()):
        print(f"note: uniform {cand} measures better than every front plan that costs no more")
    for i, j in ([] if inverted else front.below_cheaper()):
        worse, better = _distinct(front.plans[i].measured["value"], front.plans[j].measured["value"])
        print(f"note: front plan {i} ({kind} {front.plans[i].costs[kind]:.6g}) measures "
              f"{worse}, worse than the cheaper plan {j} ({better}):"
              " the sensitivities, each measured alone, mispredict it; pick the cheaper one, or mixprec solve at that "
              "budget with --search local, which measures its moves")
    report = analysis.report(front, out)
    pngs = [name for name in ("pareto.png", "heatmap.png", "predicted_vs_measured.png") if (out / name).is_file()]
    print(f"wrote {out / 'pareto.json'}, {', '.join(str(out / n) for n in pngs)} and {report}")
    return 0


def cmd_report(args) -> int:
    front = Front.load(args.pareto)
    path = Path(args.pareto)
    check_output_dir(path if path.is_dir() else path.parent, "report directory")
    if args.select is not None and not 0 <= args.select < len(front.plans):  # checked before anything is written
        raise SpecError(f"--select {args.select} is out of range: the front has {len(front.plans)} points, 0 (the "
                        f"cheapest) to {len(front.plans) - 1}")
    if args.write_plan and args.select is None:
        raise SpecError("--write-plan needs --select N: the front point to write (0: the cheapest)")
    try:
        analysis, missing = Analysis.load(args.run or front.run or ""), None
    except SpecError as exc:
        if args.run:
            raise
        analysis, missing = None, SpecError(f"{exc}. {args.pareto} names the run {front.run!r}: give --run DIR where "
                                            "that run is now")
    if analysis is not None:
        _check_front_costs(front, analysis)  # an edited point is refused before its plan is written
    if args.write_plan:  # pareto.json holds the plan: written whether or not the run is still there
        plan = front.plan(args.select)
        plan.save(args.write_plan)
        print(f"wrote {args.write_plan}: front point {args.select}, {front.kind} "
              f"{plan.metadata['predicted_costs'][front.kind]:.6g} (use it with quantize or export --plan)")
    if missing is not None:
        raise missing
    report = analysis.report(front, path if path.is_dir() else path.parent, select=args.select)
    print(f"wrote {report}")
    return 0


def _check_front_costs(front: Front, analysis: Analysis) -> None:
    """Each front plan's recorded cost is its assignments' cost in the run (an edited point is refused, not
    reported with the costs of the plan it was); multipoint plans, whose costs depend on their point counts, and
    plans of candidates the run does not price (another run's) are left to the report's own checks."""
    costs = analysis.costs
    if front.kind not in costs.tables:
        return
    for i, p in enumerate(front.plans):
        unknown = sorted({str(c) for c in (p.assignments or {}).values()} - set(costs.candidates))
        if unknown:
            raise SpecError(f"pareto.json point {i} names candidate(s) {', '.join(unknown)}, which the run did not "
                            "measure: the point was edited, or pareto.json is of another run; regenerate it with "
                            "`mixprec pareto`")
        if not p.assignments or any(parse_candidate(c).multipoint for c in p.assignments.values()) \
                or set(p.assignments) != set(costs.groups):
            continue
        priced = costs.total(front.kind, dict(p.assignments))
        if not math.isclose(priced, p.costs[front.kind], rel_tol=1e-6, abs_tol=1e-9):
            raise SpecError(f"pareto.json point {i} records a {front.kind} cost of {p.costs[front.kind]:.6g}, and its "
                            f"assignments cost {priced:.6g} in the run: the point was edited (its plan or its costs); "
                            "regenerate pareto.json with `mixprec pareto`")


def cmd_export(args) -> int:
    from .export import export, report_path
    from .export.targets import get_target
    _read_plan(args)
    onnx = get_target(args.target).writer == "export"
    for flag, value, default, owner, applies in (
            ("--float-type", args.float_type, None, "--target gguf", args.target == "gguf"),
            ("--tokenizer-pre", args.tokenizer_pre, None, "--target gguf", args.target == "gguf"),
            ("--reduce-range", args.reduce_range, False, "an ONNX target (ort-cpu, ort-cpu-avx2, ort-cpu-lm)", onnx),
            ("--accuracy-level", args.accuracy_level, 4, "an ONNX target (ort-cpu, ort-cpu-avx2, ort-cpu-lm)", onnx),
            ("--decoder", args.decoder, "fused", "an ONNX target (ort-cpu, ort-cpu-avx2, ort-cpu-lm)", onnx),
            ("--threads", args.threads, None, "an ONNX target (ort-cpu, ort-cpu-avx2, ort-cpu-lm)", onnx),
            ("--device", args.device, None, "--target cuda", args.target == "cuda"),
            ("--dtype", args.dtype, "auto", "--target cuda", args.target == "cuda")):
        if value != default and not applies:
            raise SpecError(f"{flag} is an option of {owner}; --target {args.target} does not use it: drop {flag}")
    if args.target == "cuda":
        return _export_cuda(args)
    if get_target(args.target).writer != "export":
        return _export_file(args)
    _require_data(args, "calibration batches and the example input of the export")
    if not str(args.out).endswith(".onnx"):
        raise SpecError(f"--out must name an .onnx file, got {args.out}")
    check_output_file(args.out)
    model, data, example, groups = _setup(args)
    plan = _plan_of(args, groups, same_groups=False)
    rounding = _export_rounding(args, plan)
    eval_spec = args.eval or (args.model if is_builtin(args.model) else None)
    from . import hf
    source = "hf:" + str(hf.parse(args.model).folder.resolve()) if hf.is_hf(args.model) else None
    result = export(model, plan, data, args.target, args.out, reduce_range=args.reduce_range, source_model=source,
                    accuracy_level=args.accuracy_level, decoder=args.decoder,
                    evaluate=load_eval(eval_spec, args.model) if eval_spec else None,
                    example_input=example, weight_range=args.weight_range, activation_range=args.activation_range,
                    threads=args.threads, rounding=rounding or "nearest",
                    rounding_checkpoint=cache_dir() / "rounding")  # an interrupted rounding resumes
    _table(["layer", "candidate", "written as", "ONNX Runtime runs", "low precision"],
           [(r["layer"], r["candidate"], r["format"], r["runtime_op"], "yes" if r["low_precision"] else "NO")
            for r in result.layers])
    if result.simulated is not None:
        print(f"simulated {result.simulated.name} {result.simulated.value:.6g}, exported {result.exported.value:.6g}")
    for where, value in result.agreement.items():
        n = result.outputs.get(where)
        detail = (f" ({round((1 - value) * n):,} of {n:,} differ: a top-1 accuracy gap from these alone has a standard "
                  f"error of at most {result.noise():.2f} points)" if n and where == "evaluation" else "")
        print(f"top-1 agreement of exported and simulated outputs on the {where} data: {100 * value:.2f}%{detail}")
    for where, value in result.sqnr_db.items():
        print(f"exported against simulated outputs on the {where} data: "
              + (f"SQNR {value:.1f} dB" if value != float("inf") else "equal"))
    _print_notes([n for n in result.notes if n not in groups.notes])  # the model's own notes were said already
    print(f"wrote {result.path} ({format_bytes(result.size_bytes)}) and {report_path(result.path)}")
    return 0


def _export_rounding(args, plan: Plan):
    """The rounding an export writes the weights of: --rounding, else the one the plan was chosen with (measured
    with those weights: deploy them), else None (nearest); refused before it runs where its weights cannot lie
    on the file's grid."""
    from .export import check_rounding_grid
    rounding = _rounding(args)
    recorded = args.rounding is None and plan_rounding(plan.metadata) is not None
    if recorded:
        rounding = plan_rounding(plan.metadata)
    try:
        check_rounding_grid(rounding, {n: parse_candidate(c) for n, c in plan.layer_candidates().items()})
    except PlanError as exc:
        if recorded:
            raise PlanError(f"the plan was chosen with {rounding.name}-rounded weights (options "
                            f"{rounding.options()}), which export would write: {exc}") from exc
        raise
    if recorded:
        print(f"note: the plan was chosen with {rounding.name}-rounded weights; they are what the file holds "
              f"(options {rounding.options()}; --rounding nearest writes nearest rounding's instead)")
    return rounding


def _export_file(args) -> int:
    """export --target gguf | compressed-tensors: check the plan on the target, apply it (with --rounding, else the
    plan's own rounding, else nearest), write and read back the file or folder, and report; no runtime of those
    targets runs here."""
    from collections import Counter

    from .apply import apply
    from .evaluation import evaluate_model
    from .export import check_target, export_gguf, report_path, write_compressed_tensors
    from .export.compressed_tensors import REPORT_FILE, check_output_folder
    from .groups import layer_kind
    gguf = args.target == "gguf"
    if gguf and not str(args.out).endswith(".gguf"):
        raise SpecError(f"--out must name a .gguf file for --target gguf, got {args.out}")
    out = check_output_file(args.out) if gguf else check_output_folder(args.out, "--out")
    args.needs_data = not gguf  # GGUF's candidates are weight-only: no calibration
    model, data, _, groups = _setup(args)
    if gguf:  # a model GGUF cannot hold is said before any of its layers' formats
        from .export.gguf import _find_causal_lm
        _find_causal_lm(model)
    plan = _plan_of(args, groups, same_groups=False)
    candidates = {name: parse_candidate(c) for name, c in plan.layer_candidates().items()}
    check_target(args.target, {name: (layer_kind(m) or type(m).__name__, tuple(m.weight.shape), candidates[name])
                               for name, m in plan.model_layers(model).items()})
    rounding = _export_rounding(args, plan)
    if rounding is not None and rounding.name != "nearest" and data is None:
        raise SpecError(f"{rounding.name} rounding reads calibration batches: give --data (or --rounding nearest)")
    weight_range = "minmax" if gguf else args.weight_range  # GGUF's q8_0/q4_0 fix their own (min/max) ranges
    quantized = apply(model, plan, None if gguf and (rounding is None or rounding.name == "nearest") else data,
                      weight_range=weight_range, activation_range=args.activation_range,
                      rounding=rounding or "nearest", rounding_checkpoint=cache_dir() / "rounding")
    notes = []
    folder = _checkpoint_folder(args.model)
    if gguf:
        tokenizer, pre, note = _gguf_tokenizer(args.model, folder)
        notes += [note] if note else []
        result = export_gguf(model, plan, out, quantized=quantized, tokenizer=tokenizer,
                             tokenizer_pre=args.tokenizer_pre or pre,
                             float_type=args.float_type or "f32", progress=False)
        if note:  # the command's note says why the file has no vocabulary: export_gguf's says it again
            result.notes[:] = [n for n in result.notes if not n.startswith("no tokenizer given")]
        _table(["layer", "candidate", "GGUF tensor", "type", "bytes"],
               [(t["layer"], t["candidate"], t["name"], t["type"], format_bytes(t["bytes"]))
                for t in result.tensors if t["layer"] is not None])
        rest = Counter(t["type"] for t in result.tensors if t["layer"] is None)
        print(f"outside the plan: {sum(rest.values())} tensor(s), " + ", ".join(f"{n} {k}" for k, n in sorted(rest.items())))
        check = result.readback
        halved = sum(1 for t in result.tensors if t["layer"] is None and t["type"] == "F16" and t["name"] != "")
        print(f"read back (gguf.GGUFReader): {check['exact']}/{check['tensors']} tensors exactly as written"
              + (f": the planned layers the simulated weights, the {halved} float16 tensors outside the plan their "
                 "float32 weights rounded to float16 (the simulation and --eval keep float32)" if halved else
                 ": the simulated weights"))
        report = report_path(out)
    else:
        result = write_compressed_tensors(model, plan, out, quantized=quantized, weight_range=args.weight_range,
                                          activation_range=args.activation_range, source_folder=folder,
                                          progress=False)
        _table(["layer", "candidate", "config group", "format"],
               [(r["layer"], r["candidate"], r["group"] or "ignore", r["format"]) for r in result.layers])
        for name, group in result.groups.items():
            w, a = group["weights"], group["input_activations"]
            print(f"{name}: {group['format']}, weights {w['num_bits']}-bit {w['type']} {w['strategy']}"
                  + (f" {w['group_size']}" if w["group_size"] else "") + ("" if w["symmetric"] else " asymmetric")
                  + (f", inputs {a['num_bits']}-bit {a['type']} per {a['strategy']}" if a else "")
                  + f"; {len(group['targets'])} layer(s)")
        print(f"ignore (dense Linear layers): {len(result.ignore)}")
        check = result.readback
        print(f"read back ({check.reader}): {check.compared} tensors, "
              + ("exactly the simulated weights" if check.exact else f"{len(check.mismatched)} differ"))
        report = out / REPORT_FILE
    evaluation = None
    if args.eval:
        evaluation = evaluate_model(load_eval(args.eval, args.model), quantized)
        print(f"simulated {evaluation.name} {evaluation.value:.6g} (mixprec's simulation of the plan; the "
              f"{args.target} export itself was not re-evaluated: mixprec has no runtime for it)")
    _print_notes(notes + result.notes)
    write_json_atomic(report, {"target": args.target, "model": args.model, "plan": args.plan or f"uniform {args.uniform}",
                               **result.to_dict(), "simulated": None if evaluation is None else evaluation.to_dict(),
                               "exported_evaluated": False})
    print(f"wrote {out} ({format_bytes(result.size_bytes)}) and {report}")
    return 0


def _export_cuda(args) -> int:
    """export --target cuda: the plan on torch's low-bit kernels, saved as a folder; with --eval, the simulated
    and the deployed model evaluated side by side on --device (off a GPU, the kernels' CPU twins run)."""
    from .apply import apply
    from .evaluation import evaluate_model
    from .export import check_target, deploy_cuda, save_cuda
    from .export.cuda import check_cuda_folder
    from .groups import layer_kind
    out = check_cuda_folder(args.out, "--out")
    model, data, _, groups = _setup(args)
    plan = _plan_of(args, groups, same_groups=False)
    candidates = {name: parse_candidate(c) for name, c in plan.layer_candidates().items()}
    check_target("cuda", {name: (layer_kind(m) or type(m).__name__, tuple(m.weight.shape), candidates[name])
                          for name, m in plan.model_layers(model).items()})
    rounding = _export_rounding(args, plan)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device)
    quantized = apply(model, plan, data, weight_range=args.weight_range, activation_range=args.activation_range,
                      joins=False, rounding=rounding or "nearest", rounding_checkpoint=cache_dir() / "rounding")
    deployment = deploy_cuda(model, plan, data, quantized=quantized, device=device, dtype=args.dtype,
                             weight_range=args.weight_range, activation_range=args.activation_range)
    save_cuda(deployment, out)
    eval_spec = args.eval or (args.model if is_builtin(args.model) else None)
    simulated = deployed = None
    if eval_spec:
        evaluate = load_eval(eval_spec, args.model)
        simulated = evaluate_model(evaluate, quantized)
        deployed = evaluate_model(evaluate, deployment.model)
        deployment.refresh()
    _table(["layer", "candidate", "kind", "runs as"],
           [(r["layer"], r["candidate"], r["kind"], r["kernel"]) for r in deployment.layers])
    if simulated is not None:
        print(f"simulated {simulated.name} {simulated.value:.6g}, deployed {deployed.value:.6g} "
              f"({deployment.dtype} on {device})")
    notes = [] if device.startswith("cuda") else [
        f"deployed on {device}: the kernels' CPU twins ran, in float32; on a GPU the model runs in --dtype (auto: "
        "float16 where most planned layers are fp16, else bfloat16)"]
    if deployment.fallbacks:
        notes.append(f"{len(deployment.fallbacks)} layer(s) fell back to a dequantized matmul "
                     f"(e.g. {deployment.fallbacks[0]['layer']}: {deployment.fallbacks[0]['kernel']})")
    _print_notes(notes)
    report = out / "mixprec-cuda-report.json"
    write_json_atomic(report, {"target": "cuda", "model": args.model, "plan": args.plan or f"uniform {args.uniform}",
                               "device": device, "dtype": deployment.dtype, "layers": deployment.layers,
                               "simulated": None if simulated is None else simulated.to_dict(),
                               "deployed": None if deployed is None else deployed.to_dict(), "notes": notes})
    print(f"wrote {out} and {report}")
    return 0


def _checkpoint_folder(model_spec: str) -> Path | None:
    """The Hugging Face folder of an hf:DIR model or of the built-in smollm2 (its tokenizer and files), else None."""
    from . import hf
    if hf.is_hf(model_spec):
        return hf.parse(model_spec).folder
    if model_spec == "smollm2":
        from .builtin import smollm2
        return smollm2.converted_dir()
    return None


def _gguf_tokenizer(model_spec: str, folder: Path | None) -> tuple[Any, str | None, str | None]:
    """(tokenizer, llama.cpp pre-tokenizer name, note) for export_gguf: the folder's own tokenizer, loaded from it
    alone; for smollm2 the pre-tokenizer of the GGUF it came from, else None (export_gguf's default: the model
    type's). No tokenizer: (None, "default", why)."""
    from . import hf
    from .export.gguf import vocabulary_refusal
    if folder is None:
        return None, "default", None  # export_gguf notes that the file has no vocabulary
    try:
        tokenizer = hf.tokenizer(str(folder))
    except SpecError as exc:
        return None, "default", f"the file has no vocabulary: {exc}"
    refusal = vocabulary_refusal(tokenizer)
    if refusal:
        return None, "default", f"the file has no vocabulary: {refusal} (llama.cpp runs it on token ids)"
    if model_spec == "smollm2":
        import gguf
        from .builtin import smollm2
        return tokenizer, gguf.GGUFReader(str(smollm2.gguf_path())).fields["tokenizer.ggml.pre"].contents(), None
    return tokenizer, None, None


def cmd_profile(args) -> int:
    from .export.latency import MOVE_SE, move_counts, profile, save_profile
    _require_data(args, "each layer is timed on the input it sees on the first calibration batch")
    if args.method == "layers" and args.checks != 2:  # options the chosen method would ignore
        raise SpecError("--checks is an option of --method graph (random plans timed against its table)")
    if args.method == "graph" and args.no_whole:
        raise SpecError("--no-whole is an option of --method layers; --method graph times the whole model at every "
                        "uniform candidate, which its table is made of")
    if not str(args.out).endswith(".csv"):
        raise SpecError(f"--out must name a .csv file (the cost table solve --cost latency_ms=FILE reads), got {args.out}")
    check_output_file(args.out)
    model, data, _, groups = _setup(args)
    result = profile(model, data, _candidates(args), groups=groups, target=args.target, batch_size=args.batch_size,
                     threads=args.threads, repeats=args.repeats, weight_range=args.weight_range,
                     activation_range=args.activation_range, whole=not args.no_whole, method=args.method,
                     around=args.around, checks=args.checks, decode=args.decode)
    cands = ["fp32", *[c for c in result.candidates if c != "fp32"]]
    _table(["layer", *(f"{c} ms" for c in cands)],
           [(layer, *(f"{row[c]:.4g} ({result.ops[layer][c]})" if row[c] == row[c] else "-" for c in cands))
            for layer, row in result.layers.items()])
    shape = f"one decoding step on a {result.decode}-token cache, " if result.decode else ""
    print(f"float model {result.float_model_ms:.4g} ms on {result.target} ({shape}batch {result.batch_size}); the rest "
          f"(outside the layers) {result.rest_ms:.4g} ms")
    for cand, w in result.whole.items():
        print(f"uniform {cand}: per-layer sum {w['predicted_ms']:.4g} ms, whole model measured {w['measured_ms']:.4g} ms "
              f"({result.float_model_ms / w['measured_ms']:.2f}x the float model's speed)")
    for i, check in enumerate(result.checks, 1):
        error = check["predicted_ms"] / check["measured_ms"] - 1
        used = sorted(set(check["assignments"].values()))
        what = "mixed" if len(used) > 1 else f"drawn uniform: {used[0]}" if used else "empty"
        print(f"random plan {i} ({what}): table {check['predicted_ms']:.4g} ms, whole model measured "
              f"{check['measured_ms']:.4g} ms ({100 * error:+.1f}%)")
    if result.moves:
        faster, noise = move_counts(result.moves)
        print(f"moves around the base: {len(result.moves)} timed, each entered at its measured change + {MOVE_SE:g} "
              f"standard errors; {faster} surely faster than the base (entered as a saving); {noise} "
              "measured faster by less than that (entered as a cost; moves in the JSON)")
    for note in result.notes():
        print(f"note: {note}")
    reasons = sorted(set(result.skipped.values()))
    if reasons:
        print(f"note: {len(result.skipped)} (layer, candidate) entries cannot run on {result.target} and are left out "
              f"of the table (the solver never chooses them): " + "; ".join(reasons[:3]))
    csv_path, json_path = save_profile(result, args.out)
    print(f"wrote {csv_path} (use: mixprec solve RUN --cost latency_ms={csv_path} --budget latency_ms=...) and {json_path}")
    return 0


def cmd_evaluate(args) -> int:
    from .specs import load_model
    tokenizer = args.tokenizer  # whose tokenizer ppl: and text: specs read with
    if args.model.endswith(".onnx"):
        from .export import report_path
        from .export.ort import OrtModule
        model = OrtModule(args.model, args.threads)
        if tokenizer is None and report_path(args.model).is_file():  # the hf: folder it was exported from
            import json
            try:
                tokenizer = json.loads(report_path(args.model).read_text()).get("source_model")
            except (ValueError, OSError, AttributeError):  # an unreadable report: --tokenizer names it instead
                tokenizer = None
            from . import hf
            if (args.eval.startswith("ppl:") and isinstance(tokenizer, str) and hf.is_hf(tokenizer)
                    and not Path(tokenizer[3:].split("?")[0]).is_dir()):
                raise SpecError(f"{args.model} was exported from {tokenizer[3:]} (its report says so), whose tokenizer "
                                "reads the evaluation's text, and that folder no longer exists; give the tokenizer "
                                "with --tokenizer hf:DIR")
    else:
        model = load_model(args.model)
        tokenizer = tokenizer or args.model
    result = load_eval(args.eval, tokenizer)(model)
    print(f"{result.name} {result.value:.6g}")
    for name, value in result.details.items():  # the evaluation's other figures, as it returned them
        print(f"{name} {value:.6g}" if isinstance(value, (int, float)) and not isinstance(value, bool)
              else f"{name} {value}")
    return 0


def cmd_demo(args) -> int:
    from .atomic import check_output_dir
    from .demo import run_demo
    if args.out:
        check_output_dir(args.out)  # before the banner and any work, as every other command
    return run_demo(out=Path(args.out) if args.out else None, candidates=args.candidates, n_plans=args.points)


def _metric_names() -> list[str]:
    from .sensitivity import METRICS
    return list(METRICS)


def _add_run_spec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="the model the run measured, named again (needed where the run's --model is code: "
                   "a .py or module spec, or a TorchScript file; checked against the run's fingerprint)")
    p.add_argument("--data", help="the calibration data the run measured, named again (as --model)")
    p.add_argument("--trust-run", action="store_true", help="run the code the run directory names (its --model, "
                   "--data, --eval) without naming it again; the command says what it runs")


def _add_allocation_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--candidates", help="restrict to these of the run's candidates")
    p.add_argument("--cost", action="append", default=[], metavar="KIND=FILE.csv",
                   help="a custom cost table, e.g. latency_ms=latency.csv with rows layer,candidate,latency_ms "
                   "(or one column per candidate; a row named * is the rest of the model); repeatable")


UNKNOWN_COST = {"bops": "a TorchScript model's MACs are not traced"}  # why a cost can be NaN


def _cost_text(kind: str, cost: float, budget: float | None) -> str:
    """A plan's cost as solve prints it: with its budget (marked OVER where it exceeds it), or ? and why unknown."""
    if budget is not None:
        return f"{kind} {cost:.6g} (budget {budget:.6g}{', OVER' if cost > budget * (1 + 1e-9) else ''})"
    if not math.isfinite(cost):
        return f"{kind} ? (unknown: {UNKNOWN_COST.get(kind, 'not measured')})"
    return f"{kind} {cost:.6g}"


class _JoinedBudgets(argparse.Action):
    """--budget given more than once: the budgets together, as one comma-separated --budget (the last one alone
    dropped the others without a word)."""

    def __call__(self, parser, namespace, values, option_string=None):
        before = getattr(namespace, self.dest, None)
        setattr(namespace, self.dest, f"{before},{values}" if before else values)


class _Once(argparse.Action):
    """An option that takes one value: given twice, an error rather than the last one silently."""

    def __call__(self, parser, namespace, values, option_string=None):
        if getattr(namespace, f"_{self.dest}_given", False):
            parser.error(f"{option_string} is given more than once; it takes one value (got "
                         f"{getattr(namespace, self.dest)!r} and {values!r})")
        setattr(namespace, f"_{self.dest}_given", True)
        setattr(namespace, self.dest, values)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors, as every other mixprec error (argparse prints its usage block first)."""

    def error(self, message: str):
        self.exit(2, f"mixprec: error: {message} (see: {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mixprec", description="Mixed-precision post-training quantization "
                     "of PyTorch models.")
    parser.add_argument("--version", action="version", version=f"mixprec {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of an error (anywhere on the line)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("inspect", help="list quantizer groups, ties, parameters, MACs and uniform costs",
                       description="List the quantizer groups of a model and the cost of every uniform candidate.")
    _add_model_args(p)
    which = p.add_mutually_exclusive_group()  # a profile is its own list of candidates
    which.add_argument("--candidates", default=DEFAULT_CANDIDATES, help="comma-separated candidates; forms: "
                       + "; ".join(VALID_FORMS) + f" (default {DEFAULT_CANDIDATES})")
    which.add_argument("--profile", choices=sorted(PROFILES), help="use a hardware profile's candidates instead")
    p.add_argument("--json", help="also write the groups and costs to this JSON file ('-': the JSON on standard "
                   "output, the tables on standard error)")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("quantize", help="apply a plan (or one uniform candidate) and evaluate",
                       description="Quantize a model by a plan or a uniform candidate, calibrate activation "
                       "ranges, evaluate, and write model.pt, plan.json and result.json to --out.")
    _add_model_args(p)
    p.add_argument("--plan", help="plan.json to apply")
    p.add_argument("--uniform", metavar="CAND", help="put every group on this candidate, e.g. w8a8")
    p.add_argument("--eval", help="evaluation: file.py:function returning a float or a dict, or ppl:FILE[?windows=N&"
                   "length=L] (perplexity of an hf: causal LM on a text file; default for a built-in model: its own "
                   "evaluation)")
    p.add_argument("--out", required=True, help="output directory")
    _add_range_args(p)
    p.add_argument("--rounding", choices=list(ROUNDINGS), default=None, help="how weights go onto their "
                   "grid: nearest, gptq (column by column with the Hessian of the layer inputs), adaround "
                   "(learned per layer) or brecq (learned per block, Fisher-weighted); all but nearest read the "
                   "calibration data and resume after an interruption (default: the rounding the plan was chosen "
                   "with, as export; nearest for --uniform and plans chosen with it)")
    p.add_argument("--act-order", action=argparse.BooleanOptionalAction, default=None,
                   help="gptq: quantize columns by decreasing Hessian diagonal (the default; --no-act-order: in the "
                        "weight's own order, as the paper's reference code by default)")
    p.add_argument("--static-groups", action="store_true", help="gptq with groups: each group's scale chosen before "
                   "any column is quantized, not at the group's first column (with --act-order, the combination "
                   "GPTQ's users run; measured in BENCHMARKS.md, benchmarks/rounding.py)")
    p.add_argument("--rounding-iterations", type=positive_int, default=None, metavar="N",
                   help=f"adaround, brecq: optimisation steps per layer or block (default "
                        f"{ROUNDINGS['adaround']().iterations})")
    p.add_argument("--stream", action="store_true", help="keep the model's stack of blocks (an LLM's decoder layers) "
                   "in CPU memory and bring each onto --device only while it runs: a model larger than the GPU, in "
                   "about two blocks' memory plus what lies outside the blocks; slower by the copies")
    p.add_argument("--device", default="cpu", help="torch device to run on (cpu, cuda)")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("analyze", help="measure the sensitivity table S[group, candidate] (cached, resumable)",
                       description="Measure how much each quantizer group is damaged by each candidate, with "
                       "only that group quantized. Results go to --out incrementally; --resume RUN continues an "
                       "interrupted run. Under `torchrun --nproc_per_node N -m mixprec.cli analyze ...` the work is "
                       "sharded over N processes (gloo on CPU, nccl on GPU).")
    p.add_argument("--resume", metavar="RUN", help="continue the analysis in this run directory, with its settings "
                   "(other settings are refused, except --device and --chunk-size, which may change; --model/--data/--eval "
                   "name the run's code again)")
    p.add_argument("--trust-run", action="store_true", help="with --resume: run the code the run names (its "
                   "--model, --data, --eval) without naming it again; the command says what it runs")
    p.add_argument("--model", help="as for inspect")
    p.add_argument("--data", help="calibration data (default for a built-in model: its own)")
    p.add_argument("--calibration-samples", type=positive_int, default=None, help=SAMPLES_HELP)
    p.add_argument("--tie", action="append", default=[], metavar="PATTERN", help=TIE_HELP)
    p.add_argument("--exclude", action="append", default=[], metavar="PATTERN", help=EXCLUDE_HELP)
    p.add_argument("--pin", action="append", default=[], metavar="PATTERN=CAND", help=PIN_HELP)
    which = p.add_mutually_exclusive_group()  # a profile is its own list of candidates
    which.add_argument("--candidates", default="w4a8,w8a8,w8a16", help="comma-separated candidates (default "
                       "w4a8,w8a8,w8a16)")
    which.add_argument("--profile", choices=sorted(PROFILES), help="use a hardware profile's candidates instead")
    p.add_argument("--metric", default="sqnr", help="sensitivity metric: " +
                   ", ".join(m for m in _metric_names() if m != "around") +
                   " (default sqnr; the around metric: --around CAND; docs/sensitivity.md)")
    p.add_argument("--around", metavar="CAND", help="measure around an operating point: the model with every group "
                   "on CAND (pins kept), each group moved alone to each candidate, the change of the output "
                   "divergence recorded (the around metric; replaces --metric)")
    p.add_argument("--around-divergence", choices=("auto", "kl", "sqnr"), default="auto",
                   help="with --around: KL of the output distribution (classifiers, language models) or 1/SQNR; "
                   "auto picks KL for an LM's logits, a built-in classifier's, or a classifier's whose calibration items "
                   "carry integer labels, else sqnr (default auto)")
    p.add_argument("--rounding", choices=("nearest", "gptq", "adaround"), default="nearest",
                   help="measure each candidate with the weights this rounding makes of it (rounding-aware: for a plan "
                   "you will apply with quantize --rounding gptq); each layer is rounded alone from its float "
                   "inputs. solve's guard then measures plans with it too (default nearest)")
    p.add_argument("--act-order", action=argparse.BooleanOptionalAction, default=None,
                   help="with --rounding gptq: columns by decreasing Hessian diagonal (the default; --no-act-order: "
                        "in the weight's own order)")
    p.add_argument("--static-groups", action="store_true", help="with --rounding gptq: each group's scale chosen "
                   "before any column is quantized, as export needs for grouped formats")
    p.add_argument("--eval", help="evaluation for --metric task: file.py:function returning a float or a dict, or "
                   "ppl:FILE (perplexity of an hf: causal LM)")
    p.add_argument("--out", help="run directory for the cache and the table")
    p.add_argument("--weight-range", choices=(*RANGE_METHODS, "auto"), default="mse",
                   help="weight range calibration; auto: each candidate's uniform plan is measured with mse and with "
                   "minmax ranges on the calibration data and the candidate becomes the better variant, e.g. "
                   "w4g64-minmax (default mse)")
    p.add_argument("--activation-range", choices=RANGE_METHODS, default="mse", help=RANGE_HELP["activation"])
    p.add_argument("--chunk-size", type=positive_int, default=None, help="groups measured between two cache writes "
                   "(default: an eighth of the groups)")
    p.add_argument("--no-fx", action="store_true", help="do not trace with torch.fx (one full forward per entry)")
    p.add_argument("--joins", action=argparse.BooleanOptionalAction, default=None,
                   help="measure with 8-bit quantizers on the tensors residual adds and concatenations read and write, "
                        "as ONNX Runtime's int8 graph has them (on by default with --profile ort-cpu/ort-cpu-avx2 "
                        "where the model traces with torch.fx; --no-joins turns them off); its plans are applied and "
                        "exported with them")
    p.add_argument("--stream", action="store_true", help="keep the model's stack of blocks (an LLM's decoder layers) "
                   "in CPU memory and bring each onto --device only while it runs: a model larger than the GPU, in "
                   "about two blocks' memory plus what lies outside the blocks; slower by the copies")
    p.add_argument("--device", default="cpu", help="torch device to measure on (cpu, cuda; default cpu)")
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("solve", help="choose a candidate per group: least total sensitivity within budgets",
                       description="Choose a candidate per group on an analysis run. The default search solves "
                       "the allocation exactly (integer program, HiGHS). Budgets: --budget KIND=VALUE[,KIND=VALUE...] "
                       "with KIND bytes, bops, bits (per weight) or a --cost table's kind, and VALUE absolute "
                       "(2.5MB, 1.2G, 4.5), a uniform candidate's cost (bops=w4a8) or a fraction of the "
                       "highest-precision plan (0.5x).")
    p.add_argument("run", help="analysis run directory (from mixprec analyze)")
    p.add_argument("--budget", action=_JoinedBudgets, help="e.g. bytes=2.5MB or bops=w4a8,bytes=0.4x or bits=4.5 "
                   "(repeat it or separate budgets by commas: every budget holds)")
    p.add_argument("--search", choices=list(SOLVERS), default="exact",
                   help="exact (default): optimal integer program; greedy-pareto: AIMET AMP's greedy path "
                   "(Pandey et al. 2023); greedy, bisection: Schaefer et al. 2023, lower precision while the "
                   "measured drop stays within --max-drop; mixquant: Kloberdanz & Le 2023, QEM swept to meet the "
                   "budget; refine: exact, then corrected by real measurements; local: from the exact and the two best uniform "
                   "plans within the budget, single and paired moves kept only when the output divergence on the "
                   "calibration data improves, for --time-budget")
    _add_allocation_args(p)
    _add_run_spec_args(p)
    p.add_argument("--max-drop", help="measured metric drop allowed, relative (1%%) or in the metric's units "
                   "(0.5); greedy and bisection default to 1%%; greedy-pareto uses it as its accuracy target")
    p.add_argument("--kind", help="cost kind a single-kind search lowers when no --budget is given (default: "
                   "the --cost table's kind, else bops)")
    p.add_argument("--low", metavar="CAND", help="greedy/bisection: the low candidate (default: each group's "
                   "cheapest)")
    p.add_argument("--qem", type=float, help="mixquant: the quantization error multiplier (instead of a budget)")
    p.add_argument("--base", metavar="CAND", help="mixquant: the base candidate (default: the highest precision)")
    p.add_argument("--path-search", choices=("binary", "interpolation"), default="binary",
                   help="greedy-pareto with --max-drop: how the path is searched")
    p.add_argument("--rounds", type=positive_int, default=2, help="refine: correction rounds (default 2)")
    p.add_argument("--probes", type=positive_int, default=16, help="refine: lowered groups measured in context per round "
                   "(default 16)")
    p.add_argument("--evaluations", type=positive_int, default=None, help="local: plans measured at most, each one "
                   "forward pass over the calibration data (default: as many as --time-budget allows)")
    p.add_argument("--time-budget", default="1x", metavar="1x|SECONDS",
                   help="local: no new measurement once the search has taken this long, as a multiple of the "
                   "analysis's own time (default 1x) or in seconds (90s); the best plan so far is returned")
    p.add_argument("--eval", help="evaluation for measured searches (default: the built-in model's own, or the "
                   "analysis's --eval)")
    p.add_argument("--device", default=None, help="device for measured searches (default: the analysis's)")
    _add_measure_rounding(p)
    p.add_argument("--no-guard", action="store_true", help="return the search's plan without comparing it with "
                   "the uniform plans within the budget (the guard is on by default: the plan and every uniform "
                   "plan within the budget, also with the first and last groups at 8 bits, are measured on the "
                   "calibration data, and the better one is returned)")
    p.add_argument("--guard-divergence", choices=GUARD_CHOICES, default="auto",
                   help="what the guard measures on the calibration data: against the float model, top-1 "
                   "disagreement, output KL or 1/SQNR; nll (a language model's next-token negative log-likelihood "
                   "on its calibration text); ce (a classifier's cross-entropy against the labels of --data "
                   "(inputs, labels) pairs, per pixel for a segmentation model's labels); mse (the error against the "
                   "float targets of --data (inputs, targets) pairs); or consensus (the mixed plan must be lower on "
                   "disagreement, 1/SQNR and, given labels, ce; given float targets, on 1/SQNR and mse); auto: "
                   "consensus for classifiers and for outputs given float targets, nll for language models given "
                   "token ids, 1/SQNR otherwise (default auto)")
    _add_guard_margin(p)
    p.add_argument("--guard-holdout", type=non_negative_float, default=None, metavar="FRACTION",
                   help="local: the fraction of the calibration batches held apart from the search, on which the "
                   "guard compares its plan with the uniform plans (the search takes the moves that measure best "
                   "on its own batches, so there its plan measures better than it is), at least one batch "
                   f"(default {HOLDOUT:g}: the search and the guard both use every batch)")
    p.add_argument("--out", default="plan.json", help="plan file to write (default plan.json)")
    p.set_defaults(func=cmd_solve)

    p = sub.add_parser("pareto", help="the whole trade-off: plans across one budget kind, plot and report",
                       description="Solve the plan at evenly spaced budgets of one kind, from the cheapest to the "
                       "most expensive plan, and at the cost of each uniform candidate, drop dominated plans, and write pareto.json, pareto.png and report.html "
                       "(with the uniform candidates for comparison). --eval measures every plan for real.")
    p.add_argument("run", help="analysis run directory (from mixprec analyze)")
    p.add_argument("--budget-kind", default="bops", action=_Once, help="bytes, bops, bits (per weight) or a --cost table's kind "
                   "(default bops)")
    p.add_argument("--points", type=front_points, default=30,
                   help="evenly spaced budgets the front is solved at (default 30); it is also solved at the cost of "
                   "every uniform candidate, where mixed and uniform plans are compared, so it can hold more plans "
                   "(equal plans are merged)")
    p.add_argument("--method", choices=("exact", "lagrangian"), default="exact",
                   help="exact: integer program at each budget (default); lagrangian: the convex-hull plans, "
                   "each optimal at its own cost, in milliseconds")
    _add_allocation_args(p)
    _add_run_spec_args(p)
    p.add_argument("--eval", nargs="?", const="auto", default=None,
                   help="measure the float model, every plan and every uniform candidate (cached in "
                   "RUN/evaluations.jsonl); alone: the built-in model's own evaluation or the analysis's --eval")
    p.add_argument("--device", default=None, help="device for --eval (default: the analysis's)")
    _add_measure_rounding(p)
    p.add_argument("--no-guard", action="store_true", help="keep every front plan as solved (by default each is "
                   "compared with the uniform plans within its cost on the calibration data, as solve does)")
    p.add_argument("--guard-divergence", choices=GUARD_CHOICES, default="auto",
                   help="what the guard of each point measures on the calibration data, as for solve (default auto)")
    _add_guard_margin(p)
    p.add_argument("--out", default=".", help="directory for pareto.json, pareto.png, report.html (default: .)")
    p.set_defaults(func=cmd_pareto)

    p = sub.add_parser("report", help="(re)write the HTML report of a pareto directory",
                       description="Write report.html, pareto.png and heatmap.png from a pareto.json and its run: "
                       "the trade-off curve, the sensitivity heat-map, the chosen candidate per layer for a "
                       "selected plan, and predicted against measured metric.")
    p.add_argument("pareto", help="directory holding pareto.json (or the file)")
    p.add_argument("--run", help="analysis run directory (default: the one pareto.json names)")
    p.add_argument("--write-plan", metavar="PLAN.json", help="also write front point --select as a plan.json, "
                   "for quantize and export --plan")
    p.add_argument("--select", type=int, help="index of the front point to detail (default: chosen from the "
                   "measurements, else the middle point)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("export", help="write the plan for a runtime: ONNX (re-evaluated there), GGUF, "
                       "compressed-tensors or torch's CUDA kernels", description="Export a model quantized by a plan (or a uniform "
                       "candidate) for a target runtime, with mixprec's own scales and zero-points. ort-cpu: an "
                       "ONNX file, int8 QDQ for w<B>a8, MatMulNBits for weight-only Linear layers, float for fp32; "
                       "prints, per layer, what was written and what the runtime runs (low precision or a float "
                       "fallback), the simulated and exported metric and their top-1 agreement; writes OUT and OUT's "
                       ".report.json. gguf: a Llama, Mistral or Qwen2 causal LM as a .gguf file for llama.cpp (q8_0, q4_0, fp16, fp32), "
                       "with OUT's .report.json. compressed-tensors: a checkpoint folder OUT for vLLM, with "
                       "OUT/mixprec-report.json. Both are read back against the simulation; neither is re-evaluated. cuda: the "
                       "plan on torch's low-bit GPU kernels (int4 tinygemm, int8 weight-only, fp8 _scaled_mm), saved "
                       "as a folder OUT; --eval evaluates the simulated and the deployed model.")
    _add_model_args(p)
    p.add_argument("--plan", help="plan.json to export")
    p.add_argument("--uniform", metavar="CAND", help="put every group on this candidate, e.g. w8a8")
    from .export.targets import TARGETS
    p.add_argument("--target", choices=sorted(TARGETS), default="ort-cpu", help="target runtime (default ort-cpu): "
                   + "; ".join(f"{t.name}: {t.description}" for t in TARGETS.values()))
    p.add_argument("--out", required=True, help="file to write: .onnx (ort-cpu) or .gguf (gguf); for "
                   "compressed-tensors and cuda a folder (new, empty or written by mixprec)")
    p.add_argument("--eval", help="ort-cpu: evaluation run on the simulated and the exported model (default for a "
                   "built-in model: its own); gguf, compressed-tensors: run on the simulated model only")
    p.add_argument("--float-type", choices=("f32", "f16"), default=None, help="gguf: the type of 2-D tensors "
                   "outside the plan (default f32)")
    p.add_argument("--tokenizer-pre", default=None, help="gguf: llama.cpp's pre-tokenizer name for the vocabulary "
                   "(e.g. llama-bpe, qwen2, smollm; convert_hf_to_gguf.py names the one of each model; default: "
                   "the model type's where mixprec knows it, else 'default')")
    p.add_argument("--reduce-range", action="store_true", help="check that layers with 8-bit inputs have 7-bit "
                   "weights (w7a8), which CPUs without VNNI run without saturation")
    p.add_argument("--accuracy-level", type=int, default=4, help="MatMulNBits accuracy_level (default 4: inputs "
                   "quantized to int8 inside the kernel)")
    p.add_argument("--decoder", choices=DECODERS, default="fused", help="ort-cpu, a Llama-family causal "
                   "LM: its cached step written with ONNX Runtime's fused decoder ops (default; checked against the "
                   "model's logits, else traced, with a note) or as torch.onnx traces it")
    _add_range_args(p)
    p.add_argument("--threads", type=positive_int, default=None, help="ONNX Runtime intra-op threads (default: its own)")
    p.add_argument("--rounding", choices=list(ROUNDINGS), default=None, help="how the weights the file holds go onto "
                   "their grid, on every target (default: the rounding the plan was chosen with, else nearest; the "
                   "codes must lie on nearest rounding's grid: adaround, brecq, gptq per channel or with "
                   "--static-groups; gguf reads --data for any but nearest)")
    p.add_argument("--act-order", action=argparse.BooleanOptionalAction, default=None, help="with --rounding gptq")
    p.add_argument("--static-groups", action="store_true", help="with --rounding gptq")
    p.add_argument("--rounding-iterations", type=positive_int, default=None, metavar="N",
                   help="with --rounding adaround or brecq")
    p.add_argument("--device", default=None, help="cuda: the device to deploy on (default cuda where there is one)")
    p.add_argument("--dtype", choices=CUDA_DTYPES, default="auto",
                   help="cuda: the dtype the model around the planned layers runs in (default auto: float32 off a "
                   "GPU; on CUDA float16 where most planned layers are fp16, else bfloat16, as int4 and fp8 kernels "
                   "compute; a layer of the other dtype casts its input and output)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("profile", help="time every layer at every candidate on a runtime: a latency cost table",
                       description="Time every layer at every candidate on ONNX Runtime. --method graph (default): "
                       "export the whole model at every uniform candidate, time it end to end, and read each layer's "
                       "kernel time inside that graph from ONNX Runtime's own profiler (the table predicts every "
                       "uniform plan exactly); with --around CAND, also time each group moved to each other "
                       "candidate with the rest at CAND, so plans near that point are predicted with their "
                       "float/integer boundaries; random mixed plans are timed against the table (--checks). "
                       "--method layers: export each layer alone and time it on the input it sees on the first "
                       "calibration batch. Writes OUT (.csv: layer,candidate,latency_ms and the rest of the model as "
                       "'*', what solve --cost latency_ms=OUT reads) and OUT's .json.")
    _add_model_args(p)
    which = p.add_mutually_exclusive_group()  # a profile is its own list of candidates
    which.add_argument("--candidates", default="w8a8,w4a8,fp32",
                       help="comma-separated candidates (default w8a8,w4a8,fp32)")
    which.add_argument("--profile", choices=sorted(PROFILES), help="use a hardware profile's candidates instead")
    p.add_argument("--target", choices=sorted(n for n, t in TARGETS.items() if t.writer == "export"),
                   default="ort-cpu", help="runtime to time on (default ort-cpu)")
    p.add_argument("--batch-size", type=positive_int, default=None, help="rows per timed input (default: the first "
                   "calibration batch's)")
    p.add_argument("--threads", type=positive_int, default=None, help="ONNX Runtime intra-op threads (default: its own)")
    p.add_argument("--repeats", type=positive_int, default=20, help="timed runs at least (median kept; default 20)")
    p.add_argument("--method", choices=("graph", "layers"), default="graph",
                   help="graph: each layer's kernel inside the whole model (default); layers: each layer alone")
    p.add_argument("--around", default=None, metavar="CAND",
                   help="with --method graph: measure each group's move away from the uniform plan at CAND "
                   "(e.g. w7a8: which layers to leave in float)")
    p.add_argument("--checks", type=non_negative_int, default=2, help="with --method graph: random mixed plans timed as a whole "
                   "against the table (default 2)")
    p.add_argument("--decode", type=int, default=None, metavar="CACHE",
                   help="a language model exported with its KV cache: time one decoding step (a token per row, "
                   "--batch-size rows) on a cache of CACHE tokens, what a server runs per generated token, instead "
                   "of the calibration batch as a prompt (prefill)")
    p.add_argument("--no-whole", action="store_true", help="with --method layers: skip timing the whole model at "
                   "each uniform candidate")
    _add_range_args(p)
    p.add_argument("--out", required=True, help="the cost table to write (.csv)")
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("evaluate", help="run an evaluation function on a model or an exported ONNX file",
                       description="Evaluate a model: an ONNX file (run by ONNX Runtime, all optimisations on, "
                       "through a thin nn.Module) or any --model spec, with your own --eval function.")
    p.add_argument("--model", required=True, help="model.onnx, or a --model spec as for inspect")
    p.add_argument("--eval", required=True, help="file.py:function taking the model, a built-in name, or "
                   "ppl:FILE[?windows=N&length=L] (perplexity of a causal LM on a text file)")
    p.add_argument("--threads", type=positive_int, default=None, help="ONNX Runtime intra-op threads")
    p.add_argument("--tokenizer", metavar="hf:DIR", help="the Hugging Face folder whose tokenizer a ppl: or text: "
                   "--eval reads with (default: the --model, or for a file mixprec exported from an hf: model, "
                   "that model, as its report records)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("demo", help="the whole pipeline on a small CNN: analyze, Pareto front, report",
                       description="Train (once, cached) a small CNN on scikit-learn's digits, measure the "
                       "sensitivity of every group, solve the exact Pareto front over BOPs, evaluate every plan "
                       "and every uniform candidate, and write an HTML report.")
    p.add_argument("--out", help="output directory (default ./mixprec-demo)")
    p.add_argument("--candidates", default=DEMO_CANDIDATES, help=f"candidates (default {DEMO_CANDIDATES})")
    p.add_argument("--points", type=front_points, default=12, help="budgets the front is solved at (default 12; "
                   "plans that come out the same or dominated are dropped, so the front can hold fewer)")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    from ._startup import restore
    restore()  # the imports are done: a Ctrl-C is the command's own KeyboardInterrupt from here on
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # anywhere on the line, before or after the command
    args = parser.parse_args([a for a in argv if a != "--debug"])
    args.debug = debug
    args.argv = [a for a in argv if a != "--debug"]
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    with warnings.catch_warnings():  # the filters and the hook below last for this command only
        return _run(args)


SPEC_PREFIXES = ("hf:", "text:", "ppl:")  # a path follows them in a spec


def _home(value: Any) -> Any:
    """A path argument's leading ~ (after a spec's hf:/text:/ppl: or a --cost KIND=) as the home directory, as a
    shell does where it does not expand it (quoted, or in --data=~/x)."""
    if not isinstance(value, str) or "~" not in value:
        return value
    kind, sep, rest = value.partition("=")
    if sep and rest.startswith("~") and "/" not in kind and ":" not in kind:  # --cost latency_ms=~/lat.csv
        return f"{kind}={os.path.expanduser(rest)}"
    prefix = next((p for p in SPEC_PREFIXES if value.startswith(p)), "")
    rest = value[len(prefix):]
    return prefix + os.path.expanduser(rest) if rest.startswith("~") else value


def _expand_home(args) -> None:
    """Every path argument of ``args`` with its leading ~ expanded (:func:`_home`)."""
    for name, value in vars(args).items():
        if isinstance(value, list):
            setattr(args, name, [_home(v) for v in value])
        elif isinstance(value, str):
            setattr(args, name, _home(value))


def _run(args) -> int:
    """The command, its warnings of mixprec's own kinds printed as its other notes are."""
    from .errors import DataNote, EvaluationNote, GuardNote, GuardSkipped, ModelNote, PlanNote, RoundingNote, TargetNote
    warnings.filterwarnings("ignore", category=GuardSkipped)  # the command prints it among its notes
    warnings.filterwarnings("ignore", category=GuardNote)  # likewise
    warnings.filterwarnings("ignore", category=ModelNote)  # printed by every command that reads the model
    plain = warnings.showwarning

    def show(message, category, *rest, **kw):  # these read as the command's other notes
        if issubclass(category, (TargetNote, EvaluationNote, RoundingNote, DataNote)):
            from tqdm import tqdm as bars  # on a line of its own where a progress bar is open
            bars.write(f"note: {message}", file=sys.stderr)
        elif issubclass(category, PlanNote):  # what applying the plan changed or left: among the command's output
            print(f"note: {message}", flush=True)
        else:
            plain(message, category, *rest, **kw)
    warnings.showwarning = show
    _expand_home(args)
    try:
        if getattr(args, "device", None):
            args.device = str(parse_device(args.device))
        args.torch_threads = choose_threads()
        return args.func(args)
    except BrokenPipeError:  # the output was piped to a reader that closed it (| head): end quietly, as Unix tools do
        import os
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 141
    except KeyboardInterrupt:
        import signal
        try:  # a second Ctrl-C while the process winds down (atexit hooks, finalizers) is no traceback
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        except ValueError:  # not the main thread
            pass
        _close_bars()
        print(f"mixprec: interrupted{_after_interrupt(args)}", file=sys.stderr)
        return 130
    except Exception as exc:  # one line for the user; --debug shows the traceback
        _close_bars()
        if args.debug:
            raise
        print(f"mixprec: error: {error_line(exc)}", file=sys.stderr)
        return 2


def _distinct(a: float, b: float, digits: int = 4) -> tuple[str, str]:
    """``a`` and ``b`` with as many significant digits (4 at least, 10 at most) as it takes to tell them apart."""
    while digits < 10 and f"{a:.{digits}g}" == f"{b:.{digits}g}":
        digits += 1
    return f"{a:.{digits}g}", f"{b:.{digits}g}"


def _after_interrupt(args) -> str:
    """What an interrupted command kept and how to continue, as the end of its one line."""
    func = getattr(args, "func", None)
    if func is cmd_analyze and getattr(args, "out", None):
        try:
            run = RunDirectory(args.out)
            logged = len(run.entries(None)) if run.exists else 0
        except Exception:  # a run directory the interruption left half-written: say nothing it cannot back
            return ""
        if not run.exists:
            return "; nothing was measured yet: run the same command again"
        partial = ("entries are written a chunk of groups (an eighth of them) at a time, so those of the chunk "
                   "in progress are measured again")
        if not logged:
            return (f"; no entry was written yet ({partial}): {_resume_command(args.out)} continues"
                    + (" (from the last calibration batch whose Hessian traces were finished)"
                       if getattr(args, "metric", None) == "hessian" else ""))
        return (f"; {logged} measured entr{'y is' if logged == 1 else 'ies are'} kept ({partial}): "
                f"{_resume_command(args.out)} continues")
    rounding = getattr(args, "rounding", None)
    out = Path(getattr(args, "out", None) or ".")
    if func is cmd_quantize and _written_since_start(out / "model.pt"):
        return (f"; {out / 'model.pt'}, plan.json and result.json were written before the evaluation, which was "
                "interrupted: result.json holds no metric")
    if func in (cmd_quantize, cmd_export) and rounding not in (None, "nearest", "auto"):
        folder = cache_dir() / "rounding"
        checkpoints = list(folder.glob(f"{rounding}-*.pt")) if folder.is_dir() else []
        if any(_written_since_start(f) for f in checkpoints):
            return (f"; the {rounding} rounding done so far is kept ({folder}): run the same command again to "
                    "continue from it")
        if checkpoints:  # one from an earlier run, which this one may have resumed from: kept, not added to
            return (f"; this command added no {rounding} checkpoint, and those written before are kept ({folder}): "
                    "the same command continues from the one of its settings, where there is one")
        return (f"; no {rounding} rounding was kept yet (it is written every 30 s of rounding, and at an "
                "interruption once a layer is done): the same command starts it again")
    if func in (cmd_pareto, cmd_solve):
        return "; the plans measured so far are cached in the run: run the same command again to continue"
    if func is cmd_profile:
        folder = cache_dir() / "profile"
        if folder.is_dir() and any(_written_since_start(f) for f in folder.rglob("*")):
            return f"; what was timed so far is kept ({folder}): the same command times only the rest"
        return "; nothing was timed yet: the same command starts the profile again"
    return ""


def _written_since_start(path: Path) -> bool:
    """Whether ``path`` is a file this process wrote (modified since it started)."""
    try:
        return path.is_file() and path.stat().st_mtime >= _STARTED
    except OSError:
        return False


def _resume_command(out: str) -> str:
    """The command that continues the analysis in ``out``, naming again the code (.py, module or TorchScript specs)
    the run names: mixprec runs code only where the command line names it."""
    import shlex
    try:
        run = RunDirectory(out)
        code = run.code_specs() if run.exists else {}
    except Exception:  # a run directory the interruption left without its arguments: the plain command
        code = {}
    return f"mixprec analyze --resume {shlex.quote(str(out))}" + "".join(
        f" --{option} {shlex.quote(spec)}" for option, spec in code.items())


def _close_bars() -> None:
    """Close the progress bars an error left open, so that the message starts a line of its own."""
    from tqdm import tqdm
    for bar in list(getattr(tqdm, "_instances", ())):
        try:
            bar.close()
        except Exception:  # a bar half torn down by the error: nothing left to tidy
            pass


if __name__ == "__main__":
    sys.exit(main())
