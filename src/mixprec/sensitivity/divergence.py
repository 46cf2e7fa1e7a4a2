"""How far a quantized model's output is from the float model's, on calibration data, without labels.

    kl:        mean over predicted rows (classifier samples, LM tokens) of KL(softmax(y) || softmax(y_q))
    agreement: share of rows whose top-1 differs from the float model's (label-free disagreement)
    sqnr:      sum ||y_q - y||^2 / sum ||y||^2   (1 / SQNR; for outputs that are not logits)
    nll:       mean over predicted tokens of -log softmax(y_q)[next token]   (a language model on its
               calibration text, which is its own label; not a divergence from the float model)
    ce:        mean over samples of -log softmax(y_q)[label]   (a classifier whose calibration items
               are (inputs, labels) pairs: the task loss itself; not a divergence from the float model)
    mse:       mean over output values of (y_q - target)^2   (a regression whose calibration items are
               (inputs, targets) pairs, the targets float and of the output's shape: the task loss itself)

The same formulas as the kl and sqnr sensitivity metrics, applied to a whole quantized model: the
guard and the measured searches decide with it, on the calibration data, never on the data the
user evaluates on. ``kind="auto"`` takes agreement for a classifier (2-D logits, its calibration
items carrying integer labels), kl for a language model (a (batch, tokens, vocabulary) output with a
vocabulary of 100 or more) and sqnr otherwise (embeddings, regression, detection heads);
``"auto-smooth"`` takes kl for classifiers too, for searches that need small differences to show;
``"auto-guard"`` takes ``"consensus"`` for classifiers: disagreement as the value and 1/SQNR in the
details, from the same pass (the guard's pair), and the cross-entropy against the labels beside them
where every calibration batch carries integer class labels; and nll for language models given token ids;
for other outputs whose calibration items carry float targets of the output's shape, the consensus of
1/SQNR and the mean squared error against the targets (closer to the float model is not always closer to
the targets: a U-Net denoiser's mixed plan had the lower 1/SQNR and the higher error, on the calibration
targets and on held-out data alike).
``"auto-search"`` (the measured local search) takes kl for classifiers (small differences must show)
and nll for language models given token ids.
Why nll for language models: on SmolLM2 at 5.05 and 5.10 bits/weight (lm_head at 8 bits), KL on the
calibration windows ranked the exact plan above uniform w4g64 by 8 and 5 standard errors, while the
next-token NLL on the same windows and the evaluation perplexity ranked it below (38.40 against 37.36,
38.24 against 36.66; benchmarks/guard_noise_lm.py).
Why agreement for classifiers: on ResNet-56 at the BOPs of W4A8, KL on the calibration data ranked a
mixed plan above uniform (0.320 against 0.367) while both top-1 disagreement (0.131 against 0.113)
and accuracy on the evaluation split (78.97 against 79.91) ranked it below
(benchmarks/guard_divergences.py).
Why the labels' cross-entropy joins the consensus where there are labels: closer to the float model is
not always more accurate. On ResNet-56 at the bytes of W5A8 the exact plan disagreed with the float
model's top-1 less than uniform W5A8 (paired z -1.89 on the 512 calibration images, -10.38 on the 9,000
evaluation images) and had a far lower 1/SQNR (-22.3, -88.2), yet scored 82.49 against uniform's 83.33
(float: 83.23). The labels' cross-entropy on the calibration images called it a tie (-0.46; +2.00 on the
evaluation split), so the guard returns uniform (benchmarks/guard_labels.py, guard_labels_resnet56).
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn

from ..batches import first_tensor, output_tensor, padding_mask, run_model, split_item, to_device
from ..errors import SpecError
from ..evaluation import EvalResult


CHUNK_ELEMENTS = 1 << 24  # rows of a (tokens, vocabulary) output are scored this many values at a time


def _row_chunks(x: torch.Tensor) -> int:
    """Rows per chunk of ``x``'s rows (its last dimension is a row), so that the float32 temporaries of
    one chunk stay near CHUNK_ELEMENTS values: a language model's logits (2,048 tokens x 128k vocabulary)
    are scored without a float32 copy of the whole output."""
    return max(1, CHUNK_ELEMENTS // max(1, x.shape[-1]))


def class_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` with its class scores along the last axis: a (batch, classes, height, width) output (segmentation,
    channels first as torch's convolutions write them) has them on axis 1, a (batch, classes) or (batch, tokens,
    vocabulary) one last; the batch stays first (mixprec.export.top1 reads the same axes)."""
    return x.movedim(1, -1) if x.ndim == 4 else x


def check_class_scores(ref: torch.Tensor, what: str) -> None:
    """KL and top-1 agreement read class scores along the output's class axis (:func:`class_last`): an output
    without two or more (a regression's (N, 1) or (N,)) would measure 0, or nonsense, for any model."""
    if ref.ndim < 2 or class_last(ref).shape[-1] < 2:
        from ..errors import SpecError
        raise SpecError(f"{what} compares class scores along the model output's class axis (the last, or axis 1 "
                        "of a 4-D output), and this output has shape "
                        f"{tuple(ref.shape)} (a regression?), where it measures nothing: use sqnr (--metric sqnr, "
                        f"--guard-divergence sqnr, or auto, which picks it for such outputs)")


def _kl_rows(ref: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """KL(softmax(ref) || softmax(out)) of every row (the last dimension is the vocabulary), in float64
    whatever the outputs' dtype, a chunk of rows at a time. In float32 the rounding of the two log-softmaxes
    left a floor near 5e-8 (clamped at 0, it only ever added): float16 and 8-bit entries, far below it, all
    read about 5e-8 and ranked at random."""
    check_class_scores(ref, "kl")
    ref, out = class_last(ref), class_last(out)
    ref, out = ref.reshape(-1, ref.shape[-1]), out.reshape(-1, out.shape[-1])
    step, parts = max(1, _row_chunks(ref) // 2), []  # float64 temporaries: half the rows of float32's
    for i in range(0, ref.shape[0], step):
        log_p = torch.log_softmax(ref[i:i + step].double(), dim=-1)
        log_q = torch.log_softmax(out[i:i + step].double(), dim=-1)
        parts.append((log_p.exp() * (log_p - log_q)).sum(dim=-1).clamp_min(0).float())  # >= 0 up to rounding
    return torch.cat(parts)


def token_mask(inputs: Any, out: torch.Tensor) -> torch.Tensor | None:
    """The (batch, tokens) bool mask of the real tokens where a batch is padded: a dict batch's ``attention_mask``
    beside a (batch, tokens, ...) output, with some 0 in it; None otherwise (nothing to leave out)."""
    mask = padding_mask(inputs)
    if mask is None or out.ndim < 3 or tuple(out.shape[:2]) != tuple(mask.shape):
        return None
    return mask.to(out.device)


def on_real_tokens(divergence: Callable, mask: torch.Tensor | None) -> Callable:
    """``divergence(ref, out) -> (num, den)`` over the real tokens of a padded batch alone: the padded positions'
    logits are no text, and in the sums they changed a table's ranking (a layer 17x as sensitive on a left-padded
    batch). ``mask``: token_mask's, or None (``divergence`` as it is)."""
    if mask is None:
        return divergence
    return lambda ref, out: divergence(ref[mask.to(ref.device)], out[mask.to(out.device)])


def _masked_samples(kind: str, ref: torch.Tensor, out: torch.Tensor, mask: torch.Tensor
                    ) -> tuple[torch.Tensor, float]:
    """A DIVERGENCES function's (per-sample shares, denominator) over the real tokens alone: the padded
    positions are made equal (zero) in both outputs, so they add nothing, and a per-row divergence counts the real
    rows only (sqnr's denominator already leaves the zeros out)."""
    keep = mask.to(ref.device).reshape(*mask.shape, *([1] * (ref.ndim - 2)))
    ref, out = ref * keep, out.to(ref.device) * keep
    per_sample, den = DIVERGENCES[kind](ref, out)
    return per_sample, (den if kind == "sqnr" else float(mask.sum()))


def kl_divergence(ref: torch.Tensor, out: torch.Tensor) -> tuple[float, float]:
    """(sum over rows of KL(softmax(ref) || softmax(out)), number of rows)."""
    kl = _kl_rows(ref, out)
    return float(kl.sum()), float(kl.numel())


def sqnr_divergence(ref: torch.Tensor, out: torch.Tensor) -> tuple[float, float]:
    """(||out - ref||^2, ||ref||^2), in float32."""
    ref, out = ref.float(), out.float()
    return float((out - ref).pow(2).sum()), float(ref.pow(2).sum())


def _samples(ref: torch.Tensor) -> int:
    """How many samples an output holds: its first dimension (a batch), or one for a 1-D output."""
    return ref.shape[0] if ref.ndim >= 2 else 1


def _per_sample_vector(inputs: Any, out: torch.Tensor) -> bool:
    """Whether a 1-D output holds one value per input of the batch: its length is the inputs' leading dimension,
    above 1 (a single input's (D,) output, e.g. features of one image, stays one sample)."""
    try:
        lead = first_tensor(inputs)
    except TypeError:
        return False
    return lead.ndim >= 1 and lead.shape[0] > 1 and out.shape[0] == lead.shape[0]


def kl_samples(ref: torch.Tensor, out: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(per sample: the sum of KL over its rows (one for a classifier, its tokens for an LM), number of rows)."""
    kl = _kl_rows(ref, out)
    return kl.reshape(_samples(ref), -1).sum(dim=1), float(kl.numel())


def disagreement_samples(ref: torch.Tensor, out: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(per sample: its rows whose top-1 differs from the float model's, number of rows)."""
    check_class_scores(ref, "top-1 agreement")
    ref, out = class_last(ref), class_last(out)
    a = ref.reshape(-1, ref.shape[-1]).argmax(dim=-1)
    b = out.reshape(-1, out.shape[-1]).argmax(dim=-1)
    return (a != b).reshape(_samples(ref), -1).sum(dim=1).double(), float(a.numel())


def _squared_error(ref: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Per sample: ||out - ref||^2, in float32 (``ref`` of the output's shape)."""
    return (out.float() - ref.float()).pow(2).reshape(_samples(out), -1).sum(dim=1)


def sqnr_samples(ref: torch.Tensor, out: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(per sample: ||out - ref||^2, ||ref||^2 over the whole output), in float32."""
    return _squared_error(ref, out), float(ref.float().pow(2).sum())


def ce_samples(labels: Any, out: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(per sample: the sum over its rows of -log softmax(out)[label], number of rows), in float32; a classifier
    has one row a sample, a segmentation model's (samples, classes, height, width) output one a pixel, beside
    (samples, height, width) labels; labels -100 (ignored) add 0 and are not counted."""
    pixels = pixel_labels(labels, out)
    if not pixels and not class_labels(labels, out):
        raise SpecError("the ce divergence needs (inputs, labels) calibration items whose labels are one integer class "
                        "per sample of a (samples, classes) output, or one per pixel of a (samples, classes, height, "
                        "width) output; got labels "
                        f"{getattr(labels, 'shape', type(labels).__name__)} for output {tuple(out.shape)}: use "
                        "--guard-divergence agreement, kl or sqnr")
    samples = out.shape[0]
    scores = class_last(out) if pixels else out
    classes = scores.shape[-1]
    labels = labels.to(out.device).reshape(-1)
    keep = labels != -100
    bad = labels[keep & ((labels < 0) | (labels >= classes))]
    if bad.numel():
        raise SpecError(f"the ce divergence scores the output's {classes} classes against the labels, but label "
                        f"{int(bad[0])} is not one of them (0..{classes - 1}; -100 is ignored): check the labels "
                        "of the calibration data")
    ce = torch.nn.functional.cross_entropy(scores.reshape(-1, classes).float(), labels.where(keep, 0),
                                           reduction="none") * keep
    return ce.reshape(samples, -1).sum(dim=1), float(keep.sum())


def mse_samples(targets: Any, out: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(per sample: the sum of (out - target)^2 over its values, number of values), in float32, for float targets
    of the output's shape."""
    if not regression_targets(targets, out):
        raise SpecError("the mse divergence needs (inputs, targets) calibration items whose targets are float tensors "
                        f"of the output's shape; got targets {getattr(targets, 'shape', type(targets).__name__)} for "
                        f"output {tuple(out.shape)}: use --guard-divergence sqnr")
    return _squared_error(targets.to(out.device).reshape(out.shape), out), float(out.numel())


def regression_targets(targets: Any, out: torch.Tensor) -> bool:
    """Whether ``targets`` are float values of the output's shape (a (N,) output beside (N, 1) targets, or the
    other way round, too)."""
    if not isinstance(targets, torch.Tensor) or not targets.is_floating_point() or targets.numel() != out.numel():
        return False
    if targets.shape == out.shape:
        return True
    squeeze = lambda shape: tuple(d for d in shape[1:] if d != 1)  # noqa: E731
    return out.ndim >= 1 and targets.ndim >= 1 and targets.shape[0] == out.shape[0] \
        and squeeze(targets.shape) == squeeze(out.shape)


def pixel_labels(labels: Any, out: torch.Tensor) -> bool:
    """Whether ``labels`` are integer classes per pixel, (samples, height, width), beside a segmentation model's
    (samples, classes, height, width) output."""
    return isinstance(labels, torch.Tensor) and not labels.is_floating_point() and not labels.is_complex() \
        and out.ndim == 4 and out.shape[1] >= 2 and labels.shape == (out.shape[0], *out.shape[2:])


def class_labels(labels: Any, out: torch.Tensor, per_row: bool = True) -> bool:
    """Whether ``labels`` are integer classes (1-D) beside a classifier's (samples, classes) output, one per
    row of it (``per_row``)."""
    return isinstance(labels, torch.Tensor) and labels.ndim == 1 and not labels.is_floating_point() \
        and not labels.is_complex() and out.ndim == 2 and out.shape[-1] >= 2 \
        and (not per_row or labels.shape[0] == out.shape[0])


def token_ids(inputs: Any) -> torch.Tensor | None:
    """The (batch, tokens) integer ids a language model was given: the input tensor itself, or a dict's
    ``input_ids``; None for anything else."""
    ids = inputs.get("input_ids") if isinstance(inputs, dict) else inputs
    if isinstance(ids, torch.Tensor) and ids.ndim == 2 and not ids.is_floating_point() and not ids.is_complex():
        return ids
    return None


def nll_samples(inputs: Any, out: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(per sequence: the sum over its positions of -log q(next token), number of predicted tokens).
    The calibration text is its own label: logits at position t are scored on token t+1, where the
    attention mask (if any) marks both as real tokens."""
    ids = token_ids(inputs)
    if ids is None or out.ndim != 3 or out.shape[:2] != ids.shape:
        raise SpecError("the nll divergence needs a language model's (batch, tokens, vocabulary) logits for inputs of "
                        f"(batch, tokens) token ids; got inputs {getattr(ids, 'shape', type(inputs).__name__)} and "
                        f"output {tuple(out.shape)}: use --guard-divergence kl or sqnr")
    logits, targets = out[:, :-1].reshape(-1, out.shape[-1]), ids[:, 1:].reshape(-1, 1).to(out.device)
    step = _row_chunks(logits)
    nll = torch.cat([-torch.log_softmax(logits[i:i + step].float(), dim=-1).gather(-1, targets[i:i + step])[:, 0]
                     for i in range(0, logits.shape[0], step)]).reshape(ids.shape[0], -1)
    mask = inputs.get("attention_mask") if isinstance(inputs, dict) else None
    if isinstance(mask, torch.Tensor) and mask.shape == ids.shape:
        keep = (mask[:, 1:] * mask[:, :-1]).to(nll.device, nll.dtype)
        nll = nll * keep
        return nll.sum(dim=1), float(keep.sum())
    return nll.sum(dim=1), float(nll.numel())


DIVERGENCES = {"kl": kl_samples, "agreement": disagreement_samples, "sqnr": sqnr_samples}
TASK = {"nll": nll_samples}  # scored from the inputs and the output alone: no float reference
LABELLED = {"ce": ce_samples, "mse": mse_samples}  # scored from the calibration labels/targets and the output
CONSENSUS = ("agreement", "sqnr")  # the guard's pair for classifiers (solvers/guard.py), with ce given labels
REGRESSION_CONSENSUS = ("sqnr", "mse")  # the guard's pair for outputs with float targets beside them
AUTO = ("auto", "auto-smooth", "auto-guard", "auto-search")
# what a user may give the guard (solve --guard-divergence); the other auto kinds are the searches' own
GUARD_CHOICES = ("auto", "agreement", "kl", "sqnr", "nll", "ce", "mse", "consensus")


def auto_kind(output: torch.Tensor, labels: Any, smooth: bool = False, guard: bool = False,
              inputs: Any = None, search: bool = False) -> str:
    """agreement (kl if ``smooth`` or ``search``, consensus if ``guard``) for a classifier's logits with
    integer labels beside them; sqnr (consensus, with the targets' mse, if ``guard``) where float targets of the
    output's shape are beside it (a regression or a denoiser, even of (batch, channels, >= 100 samples)); for an
    LM's (batch, tokens, vocab) output kl, or nll if ``guard`` or ``search`` and the inputs are its token ids;
    else sqnr."""
    if class_labels(labels, output, per_row=False):
        return "kl" if smooth or search else "consensus" if guard else "agreement"
    if regression_targets(labels, output):  # float targets of the output's shape: a regression, whatever its shape
        return "consensus" if guard else "sqnr"
    if output.ndim == 3 and output.shape[-1] >= 100:
        ids = token_ids(inputs)
        own_text = ids is not None and tuple(ids.shape) == tuple(output.shape[:2])
        return "nll" if (guard or search) and own_text else "kl"
    return "consensus" if guard and regression_targets(labels, output) else "sqnr"


class OutputDivergence:
    """``measure(model)``: the divergence of ``model``'s output from the float model's on ``data``
    (the float outputs are computed once). Called as an evaluation, it returns an EvalResult
    (lower is better), so plan evaluators can cache it like any metric."""

    def __init__(self, float_model: nn.Module, data: Iterable, kind: str = "auto", max_batches: int | None = None):
        if kind not in AUTO and kind not in DIVERGENCES and kind not in TASK and kind not in LABELLED \
                and kind != "consensus":
            raise SpecError(f"unknown divergence {kind!r}; choose one of: "
                            f"{', '.join(AUTO + tuple(DIVERGENCES) + tuple(TASK) + tuple(LABELLED) + ('consensus',))}")
        batches = [split_item(item) for item in data]
        if max_batches is not None:
            batches = batches[:max_batches]
        if not batches:
            raise SpecError("measuring a divergence needs calibration data; give at least one batch")
        self.float_model, self.kind = float_model, kind
        self.inputs = [inputs for inputs, _ in batches]
        self.labels = [labels for _, labels in batches]
        self.reference: list[torch.Tensor] | None = None  # made on first use, where the model is by then
        self._device: torch.device | None = None

    @property
    def device(self) -> torch.device:
        """Where the float model ran for its reference outputs (fixed then: while a plan is measured, a
        plan evaluator may hold some of the float model's weights in CPU memory)."""
        if self._device is None:
            param = next(self.float_model.parameters(), None)
            return param.device if param is not None else torch.device("cpu")
        return self._device

    def prepare(self) -> None:
        """Compute the float model's outputs now (they are otherwise made on first use), before a plan
        evaluator moves the float model's weights out of the way (mixprec.apply.applied_beside)."""
        self._references()

    def _references(self) -> list[torch.Tensor]:
        if self.reference is None:
            self._device = self.device
            with torch.no_grad():
                # kept in the model's output dtype (a bfloat16 LM's logits: half the memory); every
                # divergence computes in float32
                self.reference = [output_tensor(run_model(self.float_model, to_device(x, self.device))).detach()
                                  for x in self.inputs]
            if self.kind in AUTO:
                self.kind = auto_kind(self.reference[0], self.labels[0], smooth=self.kind == "auto-smooth",
                                      guard=self.kind == "auto-guard", inputs=self.inputs[0],
                                      search=self.kind == "auto-search")
            if self.kind in TASK or self.kind in LABELLED:  # scored without them: the float outputs need not stay
                self.reference = [None] * len(self.reference)
        return self.reference

    @property
    def consensus(self) -> tuple[str, ...]:
        """The divergences the consensus measures: top-1 disagreement and 1/SQNR, and the labels'
        cross-entropy where every calibration batch carries one integer class per sample (or per pixel of a
        segmentation model's output); for an output that is not class scores, with float targets of its shape
        beside it in every batch, 1/SQNR and the targets' mean squared error. The last one of several scored
        against labels or targets only vetoes (mixprec.solvers.guard's ``rank_by``)."""
        references = self._references()
        pairs = list(zip(references, self.labels))
        if pairs and all(ref is not None and regression_targets(labels, ref) for ref, labels in pairs):
            return REGRESSION_CONSENSUS
        labelled = all(ref is not None and (class_labels(labels, ref) or pixel_labels(labels, ref))
                       for ref, labels in pairs)
        return CONSENSUS + (("ce",) if labelled else ())

    @torch.no_grad()
    def measure_samples(self, model: nn.Module, kinds: tuple[str, ...] | None = None
                        ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """Several divergences from one pass of ``model`` over the data (default: this one's kind), and
        each one's share per calibration sample (they add up to the divergence). Two models' shares,
        sample by sample, give a paired difference and its standard error (the guard's noise margin)."""
        references = self._references()
        kinds = kinds or (self.kind,)
        sums = {k: [0.0, 0.0] for k in kinds}
        parts: dict[str, list[np.ndarray]] = {k: [] for k in kinds}
        from ..streaming import device_of
        place = device_of(model)  # where the measured model runs (its reference outputs may lie elsewhere)
        for x, ref, labels in zip(self.inputs, references, self.labels):
            x = to_device(x, place)
            out = output_tensor(run_model(model, x))
            ref, labels = (None if ref is None else ref.to(out.device)), to_device(labels, out.device)
            if out.ndim == 1 and ref is not None and _per_sample_vector(x, out):
                # one value per input (a regression's (N,) output): N samples of one value each, not one sample
                ref, out = ref.reshape(-1, 1), out.reshape(-1, 1)
            mask = token_mask(x, out)  # a padded batch: its padding is no text
            for k in kinds:
                per_sample, d = TASK[k](x, out) if k in TASK else LABELLED[k](labels, out) if k in LABELLED \
                    else DIVERGENCES[k](ref, out) if mask is None else _masked_samples(k, ref, out, mask)
                sums[k][0] += float(per_sample.sum())
                sums[k][1] += d
                parts[k].append(per_sample.double().cpu().numpy())
        values = {k: (n / d if d > 0 else float("inf")) for k, (n, d) in sums.items()}
        samples = {k: np.concatenate(parts[k]) / sums[k][1] if sums[k][1] > 0 else np.concatenate(parts[k])
                   for k in kinds}
        return values, samples

    def measure_all(self, model: nn.Module, kinds: tuple[str, ...] | None = None) -> dict[str, float]:
        """Several divergences from one pass of ``model`` over the data (default: this one's kind)."""
        return self.measure_samples(model, kinds)[0]

    def measure(self, model: nn.Module) -> float:
        self._references()  # resolves auto
        return self(model).value

    def __call__(self, model: nn.Module) -> EvalResult:
        """The divergence as an EvalResult; ``details["samples"]`` holds each kind's per-sample shares
        (6 significant digits), so that a cached measurement still supports a paired comparison."""
        self._references()  # resolves auto
        kinds = self.consensus if self.kind == "consensus" else (self.kind,)
        values, samples = self.measure_samples(model, kinds)
        details: dict[str, Any] = {"samples": {k: [float(f"{v:.6g}") for v in samples[k]] for k in kinds}}
        if self.kind == "consensus":  # one pass: the first is the value, the others ride in the details
            details.update({k: values[k] for k in kinds[1:]}, consensus=list(kinds))
            return EvalResult(kinds[0], values[kinds[0]], higher_is_better=False, details=details)
        return EvalResult(self.kind, values[self.kind], higher_is_better=False, details=details)
