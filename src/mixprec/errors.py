"""Every error mixprec raises on bad input is a MixprecError with a message a user can act on."""


class MixprecError(Exception):
    """Base class: what was wrong, what was expected, how to fix it."""


class CandidateError(MixprecError, ValueError):
    """A candidate string or format that does not parse or is out of range."""


class MissingCost(MixprecError):
    """A budget names a uniform candidate whose cost a measured table (a latency CSV) does not give."""


class GuardSkipped(UserWarning):
    """solve returned a plan without comparing it with the uniform plans (nothing here could measure plans):
    mixprec's promise, never worse than uniform, was not checked. The command line prints it as a note."""


class TargetNote(UserWarning):
    """Something about the target runtime that the simulation does not model, said before any measurement (in
    Python a warning; the command line prints it as a note)."""


class GuardNote(UserWarning):
    """solve returned a uniform plan, which the guard measured at least as good as the mixed plan it replaced
    (why: ``plan.metadata["guard"]``). The command line prints it as a note."""


class RoundingNote(UserWarning):
    """A plan chosen with a learned rounding (gptq, adaround, ...) is rounded by nearest because no rounding was
    given (apply, export, write_compressed_tensors, deploy_cuda in Python)."""


class EvaluationNote(UserWarning):
    """What the measurements of the user's evaluation function suggest about the function itself (in Python a
    warning; the command line prints it as a note)."""


class DataNote(UserWarning):
    """What mixprec did about what the user gave it beside the model: one-hot labels read as the classes they mark,
    an evaluation that left the model in training mode put back, a logged figure measured again because the
    evaluation changed unseen (in Python a warning; the command line prints it as a note)."""


class BudgetNote(UserWarning):
    """A plan returned over its budget (a search bounded by a measured drop, greedy or bisection, not by the
    budget): in Python a warning; the command line prints it as a note."""


class ModelNote(UserWarning):
    """What mixprec noticed about the model when it found its groups: weights in modules it does not quantize
    (they stay float and set a floor under every bytes budget), several outputs, conversions made. In Python
    ``analyze`` warns each; the command line prints them as notes of its own."""


class SpecError(MixprecError):
    """A --model / --data / --eval spec that does not resolve."""


class ModelError(MixprecError):
    """A model that cannot be quantized as given (no layers, NaN weights, wrong input shape)."""


class PlanError(MixprecError):
    """A plan that does not fit the model or is not a valid plan file."""


class MissingDataError(MixprecError, FileNotFoundError):
    """A file under ../shared/data (or another required path) is not there."""

    def __init__(self, path, what: str = ""):
        self.path = path
        super().__init__(
            f"required file not found: {path}" + (f" ({what})" if what else "")
            + ". Real evaluation data lives in ../shared/data beside the project; set MIXPREC_DATA to its location if it is elsewhere."
        )


class RoundingError(MixprecError, ValueError):
    """An unknown rounding method or option, or a rounding that cannot run on the model or data given."""


class OutputError(MixprecError):
    """An output path that cannot be written (an existing file, read-only, no space, a name too long)."""


class PlanNote(UserWarning):
    """Something about a plan as it is applied: a pin that changed a group's candidate, layers the plan does not
    name (they stay float), costs recorded anew for a plan edited after solve. The command line prints it as a
    note."""


def notify(note: str, verbose: bool, stacklevel: int = 3, category: type[Warning] = UserWarning) -> None:
    """A note to the user: printed as ``note: ...`` where the caller reports progress, else a warning of
    ``category`` (attributed ``stacklevel`` frames up: the library call the user made)."""
    if verbose:
        print(f"note: {note}")
    else:
        import warnings
        warnings.warn(note, category, stacklevel=stacklevel)


class EvaluationError(MixprecError):
    """The user's evaluation function raised or returned something that is not a finite metric."""


class RunError(SpecError):
    """A run directory that is refused: another model/data/settings, busy, or naming code not given again."""


def error_line(exc: BaseException) -> str:
    """The one line the command line prints for ``exc``: a MixprecError's message as it is; an
    OSError says which file; anything else is a fault of mixprec's own, said as one."""
    if isinstance(exc, MixprecError):
        return str(exc)
    if isinstance(exc, MemoryError):
        return "out of memory; use fewer --calibration-samples or a smaller --chunk-size"
    if type(exc).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError (and the other accelerators')
        return (f"the GPU ran out of memory ({str(exc).splitlines()[0] if str(exc) else 'no detail'}). Add --stream "
                "(the model's blocks wait in CPU memory and come onto the GPU one at a time), measure on "
                "fewer or shorter calibration windows (--calibration-samples, text:FILE?windows=N&length=L) or in "
                "smaller batches (text:FILE?batch=B), load the model in bf16 (hf:DIR?dtype=bf16), set "
                "MIXPREC_OFFLOAD=always (float weights and outputs wait in CPU memory while plans are measured), use "
                "--metric local (layer outputs only), or shard the groups over several GPUs with torchrun")
    if isinstance(exc, OSError):
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror or exc}{where}"
    return (f"internal error {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
            "(rerun with --debug for the traceback, and please report it)")
