"""The run directory of an analysis, and the one owner of every file in it.

    run.json                 fingerprint (hashes of the model weights, of its structure and code, of the
                             calibration data, of the settings) and the arguments that made the run
    entries.rank<R>.jsonl    append-only log of finished (group, candidate) entries, one per line,
                             flushed and fsync'ed: a Ctrl-C or SIGKILL loses at most the chunk in flight
    seconds.rank<R>.jsonl    append-only log of the time each chunk of entries took: an analysis resumed
                             after an interruption records the time of all its parts (a local search's
                             default time budget is the analysis's time)
    costs.json               the cost tables, the groups (name -> layers), pins, excluded layers and the
                             multipoint point counts the costs were computed with
    sensitivity.json, .csv   the finished sensitivity table
    evaluations.jsonl        append-only log of measured plans (mixprec.plan_evaluation), user's metric
    divergences.jsonl        the same for the guard's output divergences on the calibration data
    rounding/                checkpoints of learned roundings of measured plans (the two newest)
    task/                    the trust report's own run (the task metric), a run directory itself

A run made for another model, data or settings is refused before anything is written to it.
One process writes a run at a time: analyze holds an exclusive lock (flock on the directory) from
its check to its last write, and a second one is refused at once. Appends to the logs take a lock
of their own, start on a new line after a line torn by a kill, and reading skips torn lines and
entries that are not a finite value in the metric's range (those are measured again).

A run directory names the --model, --data and --eval specs that made it. Those that are code
(file.py:function, package.module:function, a TorchScript model) are never run because a run
names them: the command must name them again, or be given trust_run (--trust-run).
"""
from __future__ import annotations

import fcntl
import json
import math
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .atomic import write_json_atomic
from .errors import RunError, SpecError
from .sensitivity.table import SensitivityTable

SPEC_OPTIONS = ("model", "data", "eval")  # the arguments that name what to load (and may be code)


# Settings a run records that mixprec itself added: what a run that lacks one was measured without.
SETTING_CHANGES = {"integer_bias": "it was measured before mixprec simulated the int8 kernels' int32 bias "
                                   "rounding, mixprec.integer_bias",
                   "eval_source": "the evaluation's code (its file and the modules beside it that it imports, or the "
                                  "values bound to the function) is not the one that measured the entries there"}


# a model of the same weights whose forward or modules differ (sensitivity.store.structure_hash)
STRUCTURE = "model code (its forward or its modules; the weights are the same)"
# the data's fingerprint is of its batches in order: data read anew in another order is other data
DATA_ORDER = (". The calibration data is fingerprinted batch by batch, in order: data that comes in another order "
              "each time (a DataLoader with shuffle=True, a random sampler) is other data at each pass; give it in a "
              "fixed order (shuffle=False, or a list of batches made once)")


class RunDirectory:
    """An analysis run's folder: run.json (the arguments and the fingerprint of model, data and settings), the
    entries measured so far (resumable after an interruption), sensitivity.json/csv and costs.json, and the logs
    of measured plans (evaluations.jsonl, divergences.jsonl). A run of another model or data is refused."""
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.rejected = 0  # lines of the entries logs the last entries() call could not use
        self._lock_fd: int | None = None
        self._lock_depth = 0

    def __repr__(self) -> str:
        return f"RunDirectory({str(self.path)!r})"

    # run.json -------------------------------------------------------------------------------
    @property
    def exists(self) -> bool:
        return (self.path / "run.json").is_file()

    def _run_json(self) -> dict[str, Any]:
        path = self.path / "run.json"
        if not path.is_file():
            raise SpecError(f"{self.path} is not an analysis run directory (no run.json); start one with "
                            "`mixprec analyze --model ... --out DIR`")
        return _read_json(path)

    def arguments(self) -> dict[str, Any]:
        """The arguments of the analysis that made the run."""
        arguments = self._run_json().get("arguments", {})
        return arguments if isinstance(arguments, dict) else {}

    def fingerprint(self) -> dict[str, Any]:
        fingerprint = self._run_json().get("fingerprint", {})
        return fingerprint if isinstance(fingerprint, dict) else {}

    def model_hash(self, model) -> str:
        """``model``'s fingerprint, as this run records it where it holds one made by the former hash."""
        from .sensitivity.store import model_hash
        return model_hash(model, self.fingerprint().get("model") if self.exists else None)

    def refuse_other(self, model_hash: str, data_hash: str, structure: str | None = None) -> None:
        """Before costly work that precedes the full check (multipoint point counts): a run made for
        another model (``structure``: its structure_hash) or other data is refused now, writing nothing."""
        existing = self.fingerprint()
        differs = [k for k, v in (("model", model_hash), ("data", data_hash)) if existing.get(k) not in (None, v)]
        if structure is not None and existing.get("structure") not in (None, structure) and "model" not in differs:
            differs.append(STRUCTURE)
        if differs:
            raise RunError(f"{self.path} holds an analysis made with other {' and '.join(differs)}; nothing was "
                           "written to it. Use a new --out directory (run_dir= in Python), or delete this one"
                           f"{DATA_ORDER if 'data' in differs else ''}")

    def code_specs(self) -> dict[str, str]:
        """The specs this run names that are code (option -> spec): loading them runs it."""
        from .specs import is_code
        arguments = self.arguments()
        return {k: arguments[k] for k in SPEC_OPTIONS if isinstance(arguments.get(k), str) and is_code(arguments[k], k)}

    def specs_to_run(self, given: dict[str, str | None] | None = None, trust_run: bool = False,
                     needed: tuple[str, ...] = SPEC_OPTIONS) -> dict[str, Any]:
        """The run's arguments with the specs ``given`` on this command line in place of the run's. A spec
        that is code and comes from the run only is refused unless ``trust_run``: a run directory never
        makes code run that the user did not name. (What is loaded is checked against the fingerprint by
        :meth:`check_loaded`.)"""
        arguments = dict(self.arguments())
        given = {k: v for k, v in (given or {}).items() if v}
        unnamed = {k: v for k, v in self.code_specs().items() if k not in given and k in needed}
        if unnamed and not trust_run:
            names = " ".join(f"--{k} {v}" for k, v in unnamed.items())
            raise RunError(f"{self.path} names {names}, which is code (a Python file or module, or a TorchScript "
                           "model), and mixprec never runs code because a run directory names it. Name it on this "
                           f"command line ({names}; it is checked against the run's fingerprint), or add --trust-run "
                           "to run what the run names (in Python: Analysis.load(run, {"
                           + ", ".join(f"{k!r}: {v!r}" for k, v in unnamed.items())
                           + "}) or Analysis.load(run, trust_run=True))")
        arguments.update(given)
        return arguments

    def resume_arguments(self, given: dict[str, Any], defaults: dict[str, Any], trust_run: bool = False,
                         free: tuple[str, ...] = ("device", "chunk_size")) -> dict[str, Any]:
        """The arguments to continue this run with: its own. Of ``given`` (this command line's, where
        ``defaults`` tells what was not given), the specs replace the run's (checked against the
        fingerprint when loaded) and ``free`` options (how, not what, to measure) apply; any other option
        that differs from the run's is refused rather than ignored."""
        saved = self.arguments()
        passed = {k: v for k, v in given.items() if v != defaults.get(k)}
        conflicts = [f"--{k.replace('_', '-')} {_shown(v)} (the run has {_shown(saved.get(k))})"
                     for k, v in passed.items() if k not in SPEC_OPTIONS and k not in free and v != saved.get(k)]
        if conflicts:
            raise RunError(f"--resume continues {self.path} with the settings it was made with; "
                           f"{'; '.join(conflicts)}. Drop {'that option' if len(conflicts) == 1 else 'those options'}, "
                           "or start a new run with --out NEW_DIR")
        arguments = self.specs_to_run({k: passed.get(k) for k in SPEC_OPTIONS}, trust_run)
        arguments.update({k: v for k, v in passed.items() if k in free})
        return arguments

    def check_loaded(self, model, data: list | None) -> None:
        """The model and calibration data loaded for this run are the ones it measured (its fingerprint)."""
        from .sensitivity.store import data_hash, structure_hash
        fingerprint = self.fingerprint() if self.exists else {}
        differs = []
        if fingerprint.get("model") and self.model_hash(model) != fingerprint["model"]:
            differs.append("model")
        elif fingerprint.get("structure") and structure_hash(model) != fingerprint["structure"]:
            differs.append(STRUCTURE)
        if fingerprint.get("data") and data is not None and data_hash(list(data)) != fingerprint["data"]:
            differs.append("calibration data")
        if differs:
            raise RunError(f"the {' and '.join(differs)} loaded now {'differ' if len(differs) > 1 else 'differs'} "
                           f"from what {self.path} measured (its fingerprint); give the model and data of the "
                           f"analysis again (--model/--data; in Python Analysis.load(run, model=..., data=...)), or "
                           f"analyze again{DATA_ORDER if 'calibration data' in differs else ''}")

    # the writer's lock ------------------------------------------------------------------------
    @contextmanager
    def lock(self) -> Iterator["RunDirectory"]:
        """Exclusive, for one process, from the check to the last write (re-entrant in this process);
        a second process is refused at once rather than measuring everything again beside it."""
        if self._lock_depth == 0:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise RunError(f"{self.path} is being written by another mixprec process (an analyze of this run is "
                               "running); wait for it to finish, or use another --out directory") from None
            self._lock_fd = fd
        self._lock_depth += 1
        try:
            yield self
        finally:
            self._lock_depth -= 1
            if self._lock_depth == 0 and self._lock_fd is not None:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
                os.close(self._lock_fd)
                self._lock_fd = None

    def being_written(self) -> bool:
        """Whether another process holds this run's lock (an analyze writing it) now."""
        if self._lock_depth or not self.path.is_dir():
            return False
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        finally:
            os.close(fd)

    def claim(self, fingerprint: dict[str, Any], arguments: dict[str, Any] | None = None, rank: int = 0) -> None:
        """Check that the run is new or made for this ``fingerprint`` (else refuse, writing nothing);
        a new run records the fingerprint and the arguments (rank 0 only)."""
        # compared as run.json holds it: a tuple in a setting (adaround's beta) is a list once written
        fingerprint = json.loads(json.dumps(fingerprint, default=str))
        path = self.path / "run.json"
        if path.is_file() and rank == 0 and self._nothing_measured():
            # an analysis that stopped before its first entry (e.g. refused a metric that does not fit the
            # output): nothing to keep, so the corrected command starts the run anew
            write_json_atomic(path, {"fingerprint": fingerprint, "arguments": arguments or {}})
        elif path.is_file():
            existing = self.fingerprint()
            differs = [k for k in ("model", "data", "settings") if existing.get(k) != fingerprint.get(k)]
            if existing.get("structure") and existing["structure"] != fingerprint.get("structure") \
                    and "model" not in differs:  # its words say the weights are the same
                differs.append(STRUCTURE)  # runs written before it was recorded are not compared by it
            if differs:
                hashes = [f"{k}: {existing.get(k)!r} there, {fingerprint.get(k)!r} now" for k in differs
                          if k not in ("settings", STRUCTURE)]
                settings = existing.get("settings") if isinstance(existing.get("settings"), dict) else {}
                changed = sorted(k for k in set(settings) | set(fingerprint.get("settings", {}))
                                 if settings.get(k) != fingerprint.get("settings", {}).get(k))
                if "settings" in differs:
                    hashes.append(f"settings differ: {', '.join(changed)}")
                    hashes += [SETTING_CHANGES[k] for k in changed if k in SETTING_CHANGES]
                detail = f" ({'; '.join(hashes)})" if hashes else ""
                if (self.path.parent / "run.json").is_file():  # a run's own sub-run (the trust report's task/)
                    raise RunError(f"{self.path}, where the run {self.path.parent} keeps the measurements of its "
                                   f"trust report (--eval), holds ones made with other {' and '.join(differs)}{detail}; "
                                   f"the run's own table is done. Delete {self.path} alone to measure them again "
                                   "(the evaluation's whole file is fingerprinted: any edit to it counts)")
                raise RunError(f"{self.path} holds an analysis made with other {' and '.join(differs)}"
                               f"{detail}; nothing was written to it. Use a new --out directory "
                               f"(run_dir= in Python), or delete this one{DATA_ORDER if 'data' in differs else ''}")
        elif rank == 0:
            self.path.mkdir(parents=True, exist_ok=True)
            write_json_atomic(path, {"fingerprint": fingerprint, "arguments": arguments or {}})
        else:
            self.path.mkdir(parents=True, exist_ok=True)

    def _nothing_measured(self) -> bool:
        """Whether the run holds only its run.json (and empty entry logs): started, nothing measured or written."""
        for p in self.path.iterdir():
            if p.name == "run.json" or p.name.startswith(".") or (
                    p.name.startswith(("entries.rank", "seconds.rank")) and p.is_file() and p.stat().st_size == 0):
                continue
            return False
        return True

    # entries.rank<R>.jsonl -----------------------------------------------------------------------
    def entries(self, minimum: float | None = 0.0) -> dict[tuple[str, str], float]:
        """Every finished entry of every rank. A line that does not read as an entry (torn by a kill,
        binary, edited) or whose value is NaN, -inf or below the metric's ``minimum`` is not an entry:
        it is measured again (``self.rejected`` counts them). +inf is an entry (a group the candidate
        ruins)."""
        out, self.rejected = {}, 0
        for log in sorted(self.path.glob("entries.rank*.jsonl")):
            for line in _lines(log):
                entry = _entry(line, minimum)
                if entry is None:
                    self.rejected += 1
                else:
                    out[entry[0]] = entry[1]
        return out

    def append_entries(self, entries: dict[tuple[str, str], float], rank: int = 0) -> None:
        append_jsonl(self.path / f"entries.rank{rank}.jsonl",
                      [{"group": group, "candidate": candidate, "value": value if math.isfinite(value) else "inf"}
                       for (group, candidate), value in entries.items()])

    def append_seconds(self, seconds: float, rank: int = 0) -> None:
        """Log the time a chunk of entries took (the first chunk of a session: with what came before it)."""
        append_jsonl(self.path / f"seconds.rank{rank}.jsonl", [{"seconds": round(float(seconds), 4)}])

    def measured_seconds(self) -> float | None:
        """The time the logged chunks took, over every session of the run: the slowest rank's sum (ranks measure
        side by side). None where nothing is logged (a run of an earlier version)."""
        sums = []
        for log in sorted(self.path.glob("seconds.rank*.jsonl")):
            total = 0.0
            for line in _lines(log):
                try:
                    value = json.loads(line.decode("utf-8")).get("seconds")
                except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
                    continue  # a line torn by a kill: that chunk's time is lost, not the others'
                if isinstance(value, (int, float)) and math.isfinite(value) and value >= 0:
                    total += value
            sums.append(total)
        return max(sums) if sums and max(sums) > 0 else None

    # costs.json ------------------------------------------------------------------------------------
    def write_costs(self, saved: dict[str, Any]) -> None:
        """costs.json, with the checksum of its costs: they are computed from the model, never measured, so one
        changed later is an edit, which read_costs refuses."""
        write_json_atomic(self.path / "costs.json", {**saved, "checksum": _costs_checksum(saved)})

    def read_costs(self) -> dict[str, Any]:
        path = self.path / "costs.json"
        remedy = (f"`mixprec analyze --resume {self.path}` writes it again (the costs are computed from the model; "
                  "the measured entries are kept)")
        if not path.is_file():
            raise SpecError(f"{path} is missing; {remedy}")
        saved = _read_json(path, remedy)
        recorded = saved.pop("checksum", None) if isinstance(saved, dict) else None
        if recorded is not None and recorded != _costs_checksum(saved):  # runs written before it are not checked
            raise RunError(f"{path} is not as the analysis wrote it (its costs, computed from the model, were "
                           f"edited); {remedy}. To plan with costs of your own, give a table: --cost KIND=FILE.csv")
        return saved

    # sensitivity.json / .csv -----------------------------------------------------------------------
    def write_table(self, table: SensitivityTable) -> None:
        table.save(self.path)

    def read_table(self) -> SensitivityTable:
        if not (self.path / "sensitivity.json").is_file():
            if (self.path / "run.json").is_file():  # an analysis run whose table is missing or not written yet
                if self.being_written():
                    raise RunError(f"{self.path} is being measured by another mixprec process (an analyze of this "
                                   "run is running): its table is written when it finishes; wait for it")
                logged = len(self.entries(None))
                raise SpecError(f"{self.path} has no sensitivity.json (an analysis interrupted before its table, or "
                                f"the file removed); `mixprec analyze --resume {self.path}` measures what is left and "
                                f"writes it ({logged} entr{'y' if logged == 1 else 'ies'} logged are kept)")
            raise SpecError(f"{self.path} is not an analysis run (no sensitivity.json); create one with "
                            f"`mixprec analyze --model ... --out {self.path}`")
        try:
            table = SensitivityTable.load(self.path)
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise RunError(f"{self.path / 'sensitivity.json'} is damaged ({type(exc).__name__}: {exc}); "
                           f"`mixprec analyze --resume {self.path}` writes it again from the entries") from exc
        bad = _bad_entries(table)
        if bad:
            raise RunError(f"{self.path / 'sensitivity.json'} holds {bad}, which no analysis writes (edited or "
                           f"damaged); `mixprec analyze --resume {self.path}` writes it again from the entries")
        changed = self._unlike_entries(table)
        if changed:
            raise RunError(f"{self.path / 'sensitivity.json'} holds {changed}, which its entries log measured "
                           f"otherwise (the table edited?); `mixprec analyze --resume {self.path}` writes it again "
                           "from the entries (to plan with other sensitivities, pin groups or give a cost table "
                           "instead)")
        return table

    def _unlike_entries(self, table: SensitivityTable) -> str:
        """The first entry of ``table`` that the run's entries log holds another value for ("" where none): the
        table is written from the log, so a difference is an edit."""
        rejected = getattr(self, "rejected", 0)
        logged = self.entries(None)
        self.rejected = rejected  # what the caller's own reading of the log counted
        for i, group in enumerate(table.groups):
            for j, candidate in enumerate(table.candidates):
                value, measured = float(table.values[i, j]), logged.get((group, candidate))  # logged: never NaN
                if measured is not None and not math.isclose(value, measured, rel_tol=1e-9):  # isclose(inf, inf)
                    return f"{value!r} for {group} at {candidate}, logged as {measured!r}"
        return ""

    # evaluations.jsonl, rounding/, task/ -----------------------------------------------------------
    @property
    def evaluations_log(self) -> Path:
        return self.log_path("evaluations")

    def log_path(self, name: str = "evaluations") -> Path:
        """evaluations (the user's metric) or divergences (the guard's)."""
        return self.path / f"{name}.jsonl"

    def evaluations(self, name: str = "evaluations") -> list[dict[str, Any]]:
        """Every logged plan evaluation; lines torn by a crash are skipped."""
        return read_jsonl(self.log_path(name))

    def append_evaluation(self, entry: dict[str, Any], name: str = "evaluations") -> None:
        append_jsonl(self.log_path(name), [entry])

    @property
    def rounding_checkpoints(self) -> Path:
        return self.path / "rounding"

    @property
    def task(self) -> "RunDirectory":
        """The run of the trust report's task metric."""
        return RunDirectory(self.path / "task")


def _bad_entries(table: SensitivityTable) -> str:
    """What in a finished table no analysis writes: an unmeasured (NaN) entry, -inf, or a value below the
    metric's least (a negative KL or 1/SQNR); '' where there is none."""
    from .sensitivity import METRICS
    values = table.values
    minimum = getattr(METRICS.get(table.metric), "minimum", None)
    where = np.array([[not _measured(float(v), minimum) for v in row] for row in values], dtype=bool).reshape(
        values.shape)
    if not where.any():
        return ""
    g, c = (int(i) for i in np.argwhere(where)[0])
    value = values[g, c]
    what = "NaN" if math.isnan(value) else f"{value:g}" + (f" (a {table.metric} entry is at least {minimum:g})"
                                                          if minimum is not None and value > -math.inf else "")
    return (f"{int(where.sum())} entr{'y' if where.sum() == 1 else 'ies'} that cannot be measured values, e.g. "
            f"{what} at ({table.groups[g]}, {table.candidates[c]})")


def append_jsonl(path: Path, items: list[dict[str, Any]]) -> None:
    """Append one JSON object per line, under an exclusive lock of the file, flushed and fsync'ed;
    after a line torn by a kill the first item starts on a new line (the fragment stays a bad line)."""
    from .atomic import finite_json
    from .errors import OutputError
    text = "".join(json.dumps(finite_json(item), default=float, allow_nan=False) + "\n" for item in items)
    try:
        with path.open("ab+") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                f.seek(0, os.SEEK_END)
                if f.tell() > 0:
                    f.seek(-1, os.SEEK_END)
                    if f.read(1) != b"\n":
                        text = "\n" + text
                f.write(text.encode("utf-8"))
                f.flush()
                os.fsync(f.fileno())
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    except OSError as exc:
        raise OutputError(f"cannot append to {path}: {exc.strerror or exc}; what was measured before is kept, "
                          "and a resume measures the rest") from exc


def _shown(value: Any) -> str:
    if isinstance(value, list):
        return " ".join(map(str, value)) or "none"
    return "none" if value is None else str(value)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a log (append_jsonl's), one a line; a line torn by a crash, or not an object, is
    skipped; no file is no lines."""
    out = []
    for line in _lines(path) if path.is_file() else []:
        try:
            item = json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(item, dict):
            out.append(item)
    return out


def _lines(path: Path) -> list[bytes]:
    """The lines of a log as bytes (a binary or torn line is simply one that does not parse)."""
    return [line for line in path.read_bytes().split(b"\n") if line.strip()]


def _costs_checksum(saved: dict[str, Any]) -> str:
    """The SHA-256 of costs.json's content (without its checksum), as canonical JSON, with a non-finite number as
    the file holds it (a TorchScript model's unknown BOPs are written "nan", and read back so)."""
    import hashlib

    from .atomic import finite_json
    body = json.dumps(finite_json(saved), sort_keys=True, default=str)
    return hashlib.sha256(body.encode()).hexdigest()


def _entry(line: bytes, minimum: float | None) -> tuple[tuple[str, str], float] | None:
    try:
        item = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(item, dict) or not isinstance(item.get("group"), str) or \
            not isinstance(item.get("candidate"), str):
        return None
    value = item.get("value")
    if value == "inf":  # written so (append_entries); a bare Infinity is not mixprec's
        return (item["group"], item["candidate"]), math.inf
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not _measured(float(value), minimum):
        return None
    return (item["group"], item["candidate"]), float(value)


def _measured(value: float, minimum: float | None) -> bool:
    """Whether ``value`` is one a measurement writes: +inf (a group the candidate ruins) or a finite value at
    least the metric's ``minimum`` (None: any); never NaN or -inf."""
    return value == math.inf or (math.isfinite(value) and (minimum is None or value >= minimum))


def _read_json(path: Path, remedy: str = "this run cannot be read: analyze again into a new --out directory"
               ) -> dict[str, Any]:
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunError(f"{path} is damaged ({type(exc).__name__}: {exc}); {remedy}") from exc
    if not isinstance(data, dict):
        raise RunError(f"{path} is not a mixprec run file (a JSON object); {remedy}")
    return data
