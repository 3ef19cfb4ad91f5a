"""The define-by-run trial: what your own training code receives, as an Optuna objective does.

    def objective(trial):
        with trial.phase("data"):
            tokenizer = trial.tokenizer(AutoTokenizer.from_pretrained(path))
            train_loader = trial.train_loader(DataLoader(train, batch_size=16, shuffle=True, collate_fn=pad))
        with trial.phase("model"):
            model = trial.model(AutoModelForSequenceClassification.from_pretrained(path, num_labels=5))
        with trial.phase("training"):
            optimizer = trial.optimizer(torch.optim.AdamW(model.parameters(), lr=5e-5))
            for epoch in trial.epochs(1):
                for batch in train_loader:
                    model(**batch).loss.backward(); optimizer.step(); optimizer.zero_grad()
        with trial.phase("inference"):
            trial.quality("validation", macro_f1=evaluate(model, val_loader))
        with trial.held_out():                      # scored outside the objective
            trial.quality("test", macro_f1=evaluate(model, test_loader))

Knob values come from the experiment file (its ``knobs:`` spaces and defaults); ``trial.knob(name)``
reads one. Knobs *act themselves* on the objects handed over -- ``trial.model`` removes blocks,
casts, attaches LoRA; ``trial.optimizer`` sets the learning rate; ``trial.train_loader`` the batch
size; ``trial.tokenizer`` the sequence length -- and install the hooks that record the evidence
their verification reads. A declared knob whose object never arrives fails the trial at the first
point that is knowable, naming what it needed.

Each ``with trial.phase(name)`` is one energy-meter window; phases the code lacks are absent.
``trial.run_phase(name, fn, *args)`` runs ``fn`` in the window and lets the search reuse what it
returns (phase-output reuse): a later trial whose earlier phases would produce the same output
gets it back without running them.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from greenknobs.context import TrialContext
from greenknobs.errors import KnobError, KnobNotApplied, TrialUsageError
from greenknobs.knobs.base import PHASE_ORDER, REGISTRY, Knob
from greenknobs.meters.noise import measure_phase, min_window_s
from greenknobs.phases import PHASES, SPLITS, Measurement, PhaseResult
from greenknobs.runtime import process_state

HELD_OUT = "test"  # the held-out window: scored and measured, never part of the objective
_MISSING: Any = object()
ProgressFn = Callable[[str, PhaseResult], None]


@dataclass
class _Window:
    """The phase window open now."""

    name: str
    excluded: list[Measurement] = field(default_factory=list)  # nested windows not charged to the phase
    first_forward: dict[bool, bool] = field(default_factory=dict)  # training?/eval? -> seen
    scoped: bool = False  # opened by a with-block (it must close it); else by start_phase / an integration
    process_state: dict[str, Any] = field(default_factory=dict)


class Trial:
    """One trial of a search (or a standalone run at the baseline, see ``current_trial``)."""

    def __init__(self, values: Mapping[str, Any], knobs: Sequence[Knob], *, meter: Any, runtime: Any, seed: int,
                 number: int | None = None, options: Mapping[str, Any] | None = None, progress: ProgressFn | None = None,
                 progress_check: Callable[[float, Callable[[], float]], None] | None = None, reuse: Any = None,
                 repeats: int = 1, spread_warning: float = 0.10, smoke: bool = False, workdir: Path | None = None,
                 objective_metric: str | None = None, serving: Any = None):
        self.number = number
        self.serving_config = serving  # greenknobs.meters.steady.ServingConfig, or None: not measured
        self.serving_result: dict[str, Any] | None = None
        self.seed = seed
        self.options: dict[str, Any] = dict(options or {})
        self.smoke = smoke  # a smoke run: loaders capped to a few batches, training to a few steps
        self.workdir = workdir  # where frameworks may write this trial's artefacts (checkpoints)
        self.objective_metric = objective_metric
        self.meter = meter
        self.runtime = runtime
        self._values = dict(values)
        self._knobs = {k.name: k for k in knobs}
        # what mechanisms read: the trial's value, or the baseline for a knob whose mechanism is
        # switched off (the knob contract's mutant)
        settings = {k.name: (self._values[k.name] if k.acting else k.default) for k in knobs}
        self.ctx = TrialContext(runtime, seed, settings=settings, meter=meter, progress_check=progress_check)
        self.ctx.trial = self
        self.results: dict[str, PhaseResult] = {}
        self.held_out_result: PhaseResult | None = None
        self._progress = progress
        self._reuse = reuse
        self._repeats, self._spread_warning = repeats, spread_warning
        self._open: _Window | None = None
        self._ran: list[str] = []  # phases in the order they ran (or were restored)
        self._handed: dict[str, Any] = {}  # object kind -> the last object of that kind handed over
        self._models: list[Any] = []  # every model watched (root hooks)
        self._optimizers: list[Any] = []  # every optimizer watched (step pre-hooks)
        self._acted: dict[str, dict[tuple[str, int], Any]] = {}  # knob -> {(kind, object id): object} it acted on
        self._subscribers: dict[str, list[Callable[..., None]]] = {}
        self._scratch: dict[str, dict[str, Any]] = {}
        self._handles: list[Any] = []
        self._outputs: dict[str, Any] = {}
        self._asked: set[str] = set()
        self._restoring = False
        self._progress_asked = False
        self._epoch_loop_active = False
        self._restored_phases: set[str] = set()
        self._context_applied: set[str] = set()
        self._adapter = False  # a five-phase pipeline: context knobs act where it calls ctx.apply_knobs()

    # -- knob values ---------------------------------------------------------------------------------
    @property
    def params(self) -> dict[str, Any]:
        """This trial's knob values (every knob the experiment declares)."""
        return dict(self._values)

    def knob(self, name: str, default: Any = _MISSING) -> Any:
        """The value of knob ``name`` in this trial. A knob the experiment does not declare is at
        ``default`` (or, for a catalog knob, the catalog's default); neither is an error."""
        if name in self._values:
            self._asked.add(name)
            self.ctx.handed_kinds.add(f"asked:{name}")
            return self.ctx.settings[name]
        if default is not _MISSING:
            return default
        if name in REGISTRY:
            return REGISTRY[name].default
        raise TrialUsageError(f"trial.knob({name!r}): the experiment does not declare it and there is no default; "
                              f"add it under knobs: in the experiment file, or pass default=")

    def declared(self, name: str) -> bool:
        return name in self._values

    def asked(self, name: str) -> bool:
        """Whether the code read knob ``name`` (its mechanism then lives in the code)."""
        return name in self._asked or f"asked:{name}" in self.ctx.handed_kinds

    # -- phases ----------------------------------------------------------------------------------------
    @property
    def current_phase(self) -> str | None:
        return self._open.name if self._open else None

    @property
    def in_with_block(self) -> bool:
        return bool(self._open and self._open.scoped)

    def phase(self, name: str) -> contextlib.AbstractContextManager[Trial]:
        """``with trial.phase("training"): ...`` -- one measured window; each phase at most once."""
        return self._window(name)

    def held_out(self) -> contextlib.AbstractContextManager[Trial]:
        """The window that scores the held-out test split: measured and reported, never in the objective."""
        return self._window(HELD_OUT)

    @contextlib.contextmanager
    def _window(self, name: str) -> Iterator[Trial]:
        self.begin_phase(name)
        assert self._open is not None
        self._open.scoped = True
        try:
            yield self
        except BaseException as exc:
            self.end_phase(name, failed=exc)
            raise
        self.end_phase(name)

    def start_phase(self, name: str) -> None:
        """Zeus-style, without re-indenting your code: end the phase open now (if any) and start
        ``name`` ("test" is the held-out window). A phase still open when the code returns ends then."""
        if self._open is not None:
            if self._open.scoped:
                raise TrialUsageError(f"trial.start_phase({name!r}) inside `with trial.phase({self._open.name!r})`")
            self.end_phase(self._open.name)
        self.begin_phase(name)

    def begin_phase(self, name: str) -> None:
        """Open phase ``name``'s window (what ``with trial.phase(name)`` does on entry; integrations
        whose frameworks announce phases, such as the Trainer callback, call this and ``end_phase``)."""
        self._enter(name)
        self.meter.begin_window(name)

    def end_phase(self, name: str | None = None, failed: BaseException | None = None) -> None:
        """Close phase ``name``'s window (default: the one open); ``failed``: the phase raised (what it
        spent still counts)."""
        name = name or self.current_phase
        if name is None or self._open is None or self._open.name != name:
            raise TrialUsageError(f"end_phase({name!r}) but the open phase is {self.current_phase!r}")
        try:
            self._phase_end_hooks(name)
            self.runtime.synchronize()
        except BaseException:
            failed = failed or RuntimeError("phase end")
            raise
        finally:
            m = self.meter.end_window(name)
            if failed is not None:
                self._record(name, PhaseResult(name, m, {"aborted": True}), aborted=True)
                self._open = None
        if failed is None:
            facts: dict[str, Any] = {"min_window_s": min_window_s(self.meter)}
            if m.time_s < facts["min_window_s"]:
                facts["below_resolution"] = True
            self._close(name, m, facts)

    def run_phase(self, name: str, fn: Callable[..., Any], *args: Any, repeatable: bool = False, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` as phase ``name`` and return what it returns. When the search
        stores phase outputs, an identical earlier trial's output comes back instead (its attributed
        energy is what building it cost). ``repeatable``: the phase may run several times on the same
        inputs (``repeats:``, or a window shorter than the meter resolves) -- inference is."""
        restored = self._reuse.restore(name, self) if self._reuse is not None else None
        if restored is not None:
            return self._restored(name, *restored)
        self._enter(name)
        out: list[Any] = [None]

        def run() -> None:
            out[0] = fn(*args, **kwargs)

        def aborted(m: Measurement) -> None:
            self._record(name, PhaseResult(name, m, {"aborted": True}), aborted=True)

        try:
            try:
                measurement, facts = measure_phase(self.meter, name, run, repeatable=repeatable, repeats=self._repeats,
                                                   spread_warning=self._spread_warning, on_abort=aborted)
            finally:
                self._phase_end_hooks(name)
        except BaseException:
            self._open = None
            raise
        self._close(name, measurement, facts)
        self._outputs[name] = out[0]
        if self._reuse is not None:
            self._reuse.ran(name, self)
        return out[0]

    def _enter(self, name: str) -> None:
        if name not in PHASES and name != HELD_OUT:
            raise TrialUsageError(f"trial.phase({name!r}): not a phase; phases are {', '.join(PHASES)} "
                                  f"(and trial.held_out() for the test split)")
        if self._open is not None:
            raise TrialUsageError(f"phase {name!r} opened inside phase {self._open.name!r}: phases do not nest")
        if name in self._ran:
            raise TrialUsageError(f"phase {name!r} opened twice in one trial: each phase is one window")
        self._check_needs(start=name)
        self._open = _Window(name, process_state=process_state())  # as the phase starts, before its knobs act
        self._ran.append(name)
        for knob, value in self._ordered():
            knob.phase_started(name, value, self)
        if name not in ("model", "data") and not self._adapter:  # (a five-phase pipeline says when, by ctx.apply_knobs())
            self.apply_context_knobs(name)

    def _phase_end_hooks(self, name: str) -> None:
        for knob, value in self._ordered():
            knob.phase_ended(name, value, self)
        self._emit("phase_end", name)

    def _close(self, name: str, m: Measurement, facts: dict[str, Any]) -> None:
        window = self._open
        assert window is not None
        self._open = None
        details: dict[str, Any] = {"measurement": facts, "process_state_at_start": window.process_state}
        # what the search spent: every window that ran (repeats, re-measured contended windows), not the median
        runs, per_window = facts.get("energy_j_runs"), facts.get("runs_per_window")
        spent = sum(e * n for e, n in zip(runs, per_window)) if runs and per_window else m.energy_j
        if window.excluded:  # nested windows charged elsewhere (the search's progress check)
            m = m.without(window.excluded)
            details["excluded"] = [{"energy_j": e.energy_j, "time_s": e.time_s, "why": "progress check"}
                                   for e in window.excluded]
        if window.excluded or spent != m.energy_j:
            details["spent_j"] = spent
        details = {**self.ctx.phase_details.get(name, {}), **details}
        self._record(name, PhaseResult(name, m, details))
        self._check_needs(end=name)

    def _record(self, name: str, result: PhaseResult, aborted: bool = False) -> None:
        if not aborted:
            if name == HELD_OUT:
                self.held_out_result = result
            else:
                self.results[name] = result
        if self._progress is not None:
            self._progress(name, result)

    def _restored(self, name: str, output: Any, result: PhaseResult) -> Any:
        self._restored_phases.add(name)
        self._check_needs(start=name)
        self._ran.append(name)
        self._outputs[name] = output
        self.results[name] = result
        if self._progress is not None:
            self._progress(name, result)
        return output

    def serving_energy(self, serve: Callable[[int], int], batches: int, rows: int, batch_size: int) -> dict[str, Any] | None:
        """Serving energy at steady state (greenknobs.meters.steady), once per trial, between the
        inference phase and the held-out window, when the experiment asks for it: ``serve(i)`` serves
        request batch ``i`` of a fixed validation workload with the model as the serving knobs left
        it and returns its predictions. Its windows count in the search's cost, in no phase."""
        cfg = self.serving_config
        if cfg is None or self.smoke or self.serving_result is not None:
            return self.serving_result
        if self._open is not None:
            raise TrialUsageError(f"serving energy is measured between phases, not inside {self._open.name!r}")
        from greenknobs.meters import steady

        self._open = _Window("serving", process_state=process_state())
        for knob, value in self._ordered():  # serving knobs that act per window (compile) act here too
            knob.phase_started("serving", value, self)
        try:
            record, spent = steady.measure(self.meter, serve, batches, cfg, rows, batch_size)
        finally:
            try:
                self._phase_end_hooks("serving")
            finally:
                self._open = None
        self.serving_result = record
        if self._progress is not None:
            self._progress("serving", PhaseResult("serving", spent, {"spent_j": spent.energy_j, "steady_state": record}))
        return record

    # -- objects handed over: knobs act on them ------------------------------------------------------------
    def model(self, model: Any, *, calibration: Sequence[Mapping[str, Any]] | None = None,
              pad_id: int | None = None) -> Any:
        """Hand over the model: model knobs act on it now (remove blocks, cast, attention, LoRA; use
        what this returns -- LoRA wraps the model), and it is watched from here on. ``calibration``:
        tokenised rows (``input_ids``, ``label``) for pruning methods that score layers on data."""
        if model is None:
            raise TrialUsageError("trial.model(None): hand over the model object")
        if pad_id is not None:
            self.ctx.pad_id = pad_id
        if calibration is not None:
            self.ctx.extras["calibration"] = calibration
        model = self._hand_over("model", model)
        if all(m is not model for m in self._models):
            self._watch_model(model)
        if self.current_phase in ("inference", HELD_OUT):  # a model handed over to serve: serving knobs act now
            for knob, value in self.knob_values("inference"):
                knob.phase_started(self.current_phase, value, self)
        return model

    def tokenizer(self, tokenizer: Any) -> Any:
        """Hand over the tokenizer: ``data.max_seq_len`` makes every call truncate to its length."""
        if getattr(tokenizer, "pad_token_id", None) is not None:
            self.ctx.pad_id = tokenizer.pad_token_id
        return self._hand_over("tokenizer", tokenizer)

    def train_loader(self, loader: Any) -> Any:
        """Hand over the training DataLoader (batch size; passes over it are counted as epochs)."""
        return self._hand_over("train_loader", self._watched_loader(loader, "train"))

    def eval_loader(self, loader: Any) -> Any:
        """Hand over a DataLoader that serves predictions (inference batch size)."""
        return self._hand_over("eval_loader", self._watched_loader(loader, "eval"))

    def optimizer(self, optimizer: Any) -> Any:
        """Hand over the optimizer *before* creating its LR scheduler (learning rate)."""
        from greenknobs.ml import instruments

        if not instruments.is_optimizer(optimizer):
            raise TrialUsageError(f"trial.optimizer(): expected a torch optimizer, got {type(optimizer).__name__}")
        if all(o is not optimizer for o in self._optimizers):
            self._optimizers.append(optimizer)
            self.keep(instruments.on_step(optimizer, lambda opt: self._emit("step", opt)))
        return self._hand_over("optimizer", optimizer)

    def training_args(self, args: Any) -> Any:
        """Hand over Hugging Face ``TrainingArguments``: the training knobs set their fields; where
        checkpoints go and whether they are kept follow the experiment's artefact policy."""
        from greenknobs.ml import hf_trainer

        args = hf_trainer.prepare_args(args, self)
        return self._hand_over("training_args", args)

    def epochs(self, default: int = 1) -> _EpochLoop:
        """``for epoch in trial.epochs(3):`` -- the epochs knob's value (``default`` when undeclared).
        Complete passes over the training loader made inside this loop are the epochs' evidence."""
        self._hand_over("epochs", default)
        return _EpochLoop(self, 1 if self.smoke else self.knob("training.epochs", default))

    @property
    def in_epoch_loop(self) -> bool:
        return self._epoch_loop_active

    def callback(self) -> Any:
        """A Hugging Face ``TrainerCallback``: opens the training window, feeds the progress check,
        and lets the knobs watch what the Trainer really did (its optimizer, steps and epochs)."""
        from greenknobs.ml import hf_trainer

        return hf_trainer.make_callback(self)

    def trainer(self, trainer: Any) -> Any:
        """Hand over a Hugging Face ``Trainer``: its events become the trial's (the training window,
        optimizer steps, epochs, the progress check on ``evaluate``), and the scores ``evaluate``
        returns inside ``trial.phase("inference")`` / ``trial.held_out()`` become quality."""
        from greenknobs.ml import hf_trainer

        return hf_trainer.attach(trainer, self)

    def hand_over(self, kind: str, obj: Any) -> Any:
        """Hand over an object of ``kind`` (integrations: a Trainer's state as "trainer")."""
        return self._hand_over(kind, obj)

    def watch(self, model: Any) -> None:
        """Watch a model's forward passes without handing it to the model knobs."""
        if all(m is not model for m in self._models):
            self._watch_model(model)

    def emit(self, event: str, *args: Any) -> None:
        """Announce an event (integrations: a Trainer's epoch_end) to the knobs that subscribed."""
        self._emit(event, *args)

    def has_trivial(self) -> bool:
        return any(k.startswith("trivial_") for k in self.ctx.quality.get("validation", {}))

    def handed(self, kind: str) -> Any:
        """The last object of ``kind`` handed over (None if none was)."""
        return self._handed.get(kind)

    def _watched_loader(self, loader: Any, role: str) -> Any:
        from greenknobs.ml import instruments

        if not instruments.is_loader(loader):
            raise TrialUsageError(f"trial.{role}_loader(): expected a torch DataLoader, got {type(loader).__name__}")
        watch = instruments.watch_loader(loader)
        if self.smoke:
            watch.cap = 2
        if not any(getattr(fn, "_greenknobs_role", None) == role for fn in watch.on_pass):
            def passed(batches: int, role: str = role) -> None:
                self._emit("pass_end", role, batches)
            passed._greenknobs_role = role  # type: ignore[attr-defined]
            watch.on_pass.append(passed)
        return loader

    def _hand_over(self, kind: str, obj: Any) -> Any:
        self._handed[kind] = obj
        self.ctx.handed_kinds.add(kind)
        for knob, value in self._ordered():
            if kind in knob.acts_on or kind in knob.watches:
                out = knob.handed(kind, obj, value, self)
                if out is not None:
                    obj = out
                    self._handed[kind] = obj
        if kind == "model" and not self._restoring:  # knobs written for ctx.model act on it here, as before
            self.ctx.model = obj
            self.apply_context_knobs("model")
            obj = self._handed[kind] = self.ctx.model
        return obj

    def apply_context_knobs(self, phase: str) -> None:
        """Knobs written against the context (``Knob.apply(ctx, value)``: a user's own, the vision
        family) act once per phase: where a five-phase pipeline calls ``ctx.apply_knobs()``, where the
        model is handed over (model knobs), or as the phase starts."""
        if phase in self._context_applied:
            return
        self._context_applied.add(phase)
        for knob, value in self.knob_values(phase):
            if knob.acting and type(knob).apply is not Knob.apply:
                knob.apply(self.ctx, value)

    def _watch_model(self, model: Any) -> None:
        from greenknobs.ml import instruments

        self._models.append(model)

        def pre(module: Any, args: tuple, kwargs: dict) -> None:
            phase = self.current_phase
            training = instruments.grad_enabled() and bool(getattr(module, "training", False))
            window = self._open
            first = window is not None and not window.first_forward.get(training)
            if first:
                assert window is not None
                window.first_forward[training] = True
                if training and phase == "training":
                    self._check_needs(forward="training")
            rows = instruments.batch_rows(args, kwargs)
            if phase is not None and rows is not None and not (phase == "training" and not training):
                self.ctx.samples[phase] = self.ctx.samples.get(phase, 0) + rows
            self._emit("forward", phase, training, first, module, args, kwargs)

        def post(module: Any, args: tuple, kwargs: dict, output: Any) -> None:
            training = instruments.grad_enabled() and bool(getattr(module, "training", False))
            self._emit("forward_done", self.current_phase, training, module, args, kwargs, output)

        self._handles += instruments.watch_forward(model, pre, post)

    # -- what knobs use while they act ---------------------------------------------------------------------
    def evidence(self, knob: Knob) -> Any:
        """The knob's typed evidence record for this trial (created on first use)."""
        ev = self.ctx.evidence.get(knob.name)
        if ev is None:
            ev = self.ctx.evidence[knob.name] = knob.evidence_type()  # type: ignore[attr-defined]
        return ev

    def may_act(self, knob: Knob, kind: str, obj: Any = None) -> bool:
        """Whether ``knob``'s mechanism acts on this object now: not when it is switched off (the
        contract's mutant), not while stored state is restored, not twice on one object, and not
        on another kind once it acted on one (a Trainer's arguments, then its optimizer: watched only)."""
        if not knob.acting or self._restoring:
            return False
        done = self._acted.setdefault(knob.name, {})
        if any(k != kind for k, _ in done) or (kind, id(obj)) in done:
            return False
        done[(kind, id(obj))] = obj  # held for the trial's life: an id is unique only while its object lives
        return True

    def scratch(self, knob: Knob) -> dict[str, Any]:
        """Per-trial working state of a knob that is not evidence (live watches, saved forwards)."""
        return self._scratch.setdefault(knob.name, {})

    def acted(self, knob: Knob) -> set[str]:
        """The kinds of object ``knob``'s mechanism acted on in this trial."""
        return {kind for kind, _ in self._acted.get(knob.name, set())}

    def on(self, event: str, fn: Callable[..., None]) -> None:
        """Subscribe to an event: forward(phase, training, first, module, args, kwargs),
        forward_done(..., output), step(optimizer), pass_end(role, batches), epoch_end(epoch),
        phase_end(phase)."""
        self._subscribers.setdefault(event, []).append(fn)

    def keep(self, handle: Any) -> None:
        """A hook handle the trial removes when it ends."""
        self._handles.append(handle)

    def _emit(self, event: str, *args: Any) -> None:
        for fn in self._subscribers.get(event, ()):
            fn(*args)

    def knob_values(self, phase: str | None = None) -> list[tuple[Knob, Any]]:
        """(knob, value) of this trial's knobs, in acting order; only ``phase``'s when given."""
        return [(k, v) for k, v in self._ordered() if phase is None or k.phase == phase]

    def _ordered(self) -> list[tuple[Knob, Any]]:
        knobs = sorted(self._knobs.values(), key=lambda k: (PHASE_ORDER.get(k.phase, 9), k.order, k.name))
        return [(k, self._values[k.name]) for k in knobs]

    def _check_needs(self, start: str | None = None, end: str | None = None, forward: str | None = None,
                     final: bool = False) -> None:
        """Fail a knob whose object never arrived, at the first point that is knowable: the end of its
        phase, the first forward of its phase, the start of a later phase when its own never ran, or
        the end of the trial."""
        for knob, _value in self._ordered():
            if not knob.needs:
                continue
            phase = knob.needed_in or knob.phase
            if phase in self._restored_phases:  # it acted when the stored output was built: its evidence came back
                continue
            due = (final or (end is not None and end == phase) or (forward is not None and forward == phase)
                   or (start is not None and PHASE_ORDER.get(start, 9) > PHASE_ORDER.get(phase, 9)
                       and phase not in self._ran))
            if not due or any(all(self._has(kind, knob) for kind in option) for option in knob.needs):
                continue
            when = f" (checked at the {'end' if end else 'start'} of the {end or start} phase)" if (end or start) else ""
            raise KnobNotApplied(f"{knob.name} never got to act: it needs {knob.needs_hint or knob.needs[0][0]}{when}")

    def _has(self, kind: str, knob: Knob) -> bool:
        """Whether the code gave ``knob`` its ``kind`` of object ("asked": the code read the value)."""
        if kind == "asked":
            return knob.name in self._asked or f"asked:{knob.name}" in self.ctx.handed_kinds
        return kind in self._handed or kind in self.ctx.handed_kinds

    # -- quality, trivial scores, progress --------------------------------------------------------------
    def quality(self, split: str, **metrics: float) -> None:
        """Scores of a split: ``validation`` steers the search, ``test`` is held out (reported only)."""
        if split not in SPLITS:
            raise TrialUsageError(f"trial.quality({split!r}, ...): the split is validation or test")
        if not metrics:
            raise TrialUsageError(f"trial.quality({split!r}): give the scores as keywords, e.g. macro_f1=0.93")
        for name, value in metrics.items():
            try:
                metrics[name] = float(value)
            except (TypeError, ValueError):
                raise TrialUsageError(f"trial.quality({split!r}, {name}=...): expected a number, got {value!r}") from None
        self.ctx.quality.setdefault(split, {}).update(metrics)

    def trivial(self, split: str, **metrics: float) -> None:
        """What a trivial predictor scores on ``split`` (the search's guard against a model that learnt nothing)."""
        self.quality(split, **{f"trivial_{k}": v for k, v in metrics.items()})

    def labels(self, *, train: Sequence[Any], validation: Sequence[Any], test: Sequence[Any] | None = None) -> None:
        """Labels of the splits, from which greenknobs computes what trivial predictors score (the
        better of the majority class and a stratified random guess; the training mean for numbers)."""
        from greenknobs.ml import metrics

        for split, truth in (("validation", validation), ("test", test)):
            if truth is not None:
                self.trivial(split, **metrics.trivial_scores_for(list(train), list(truth), self.seed))

    def check_progress(self, fraction: float, score: Callable[[], float]) -> None:
        """Partway through training: the search may stop a hopeless trial here (it raises). ``score()``
        returns validation quality now; it runs in a window of its own, not charged to the phase."""
        self._progress_asked = True  # the code offers the check (the baseline, never checked, included)
        check = self.ctx.progress_check
        if check is None:
            return

        def measured() -> float:
            with self.meter.window(f"{self.current_phase}.progress_check") as w:
                value = score()
            if self._open is not None:
                self._open.excluded.append(w.measurement)
            return value

        check(fraction, measured)

    # -- evidence for a pipeline's own mechanisms ---------------------------------------------------------
    def record(self, key: str, value: Any) -> None:
        """Evidence for a knob whose mechanism lives in your code (its ``evidence`` names the key)."""
        self.ctx.observed.record(key, value)

    def detail(self, key: str, value: Any) -> None:
        """A fact attached to the current phase's result (e.g. the parameter count after pruning)."""
        self.ctx.phase_details.setdefault(self.current_phase or "trial", {})[key] = value

    # -- phase-output reuse (phase_store.ReuseSession) ------------------------------------------------------
    _NOT_STORED = ("meter", "teacher_loader", "apply_hook", "progress_check", "trial")

    @contextlib.contextmanager
    def storable(self) -> Iterator[dict[str, Any]]:
        """What a boundary stores: the context (evidence, quality so far, pipeline state), the phase
        outputs and the objects handed over -- without the trial's hooks and live handles."""
        from greenknobs.ml import instruments

        ctx = self.ctx
        saved = {name: getattr(ctx, name) for name in self._NOT_STORED}
        try:
            for name in saved:
                setattr(ctx, name, None)
            # of what was handed over only the model lives on (loaders, optimizers, arguments are the
            # phases' own tools, rebuilt by any trial that runs those phases)
            handed = {k: v for k, v in self._handed.items() if k == "model"}
            with instruments.hooks_removed(list(handed.values()) + list(self._outputs.values())):
                yield {"ctx": ctx, "outputs": dict(self._outputs), "handed": handed}
        finally:
            for name, value in saved.items():
                setattr(ctx, name, value)

    def adopt(self, ctx: TrialContext, handed: dict[str, Any], outputs: dict[str, Any]) -> None:
        """Continue from a stored boundary: its context and objects become this trial's, and the
        knobs' evidence hooks go back on (their mechanisms already acted when it was built)."""
        ctx.meter, ctx.progress_check, ctx.trial = self.meter, self.ctx.progress_check, self
        ctx.settings = self.ctx.settings
        self.ctx = ctx
        self._stored_outputs = dict(outputs)
        self._restoring = True
        try:
            for kind, obj in handed.items():
                self._handed[kind] = obj
                if kind == "model":
                    self._watch_model(obj)
                for knob, value in self._ordered():
                    if kind in knob.acts_on or kind in knob.watches:
                        knob.handed(kind, obj, value, self)
        finally:
            self._restoring = False

    def stored_output(self, phase: str) -> Any:
        return getattr(self, "_stored_outputs", {}).get(phase)

    @property
    def restoring(self) -> bool:
        return self._restoring

    # -- the end -----------------------------------------------------------------------------------------
    def finish(self, returned: Any = None) -> dict[str, dict[str, Any]]:
        """After the code returned: its quality is complete, every knob acted, every knob's evidence
        holds. Returns the verifications (evidence per knob)."""
        if self._open is not None:  # started with start_phase: it ends with the code
            self.end_phase(self._open.name)
        if isinstance(returned, (int, float)) and not isinstance(returned, bool) and self.objective_metric:
            self.quality("validation", **{self.objective_metric: returned})
        elif isinstance(returned, Mapping):
            self.quality("validation", **dict(returned))
        if not self._ran:
            raise TrialUsageError("the code never opened a phase: wrap its work in `with trial.phase(...)` "
                                  "(data, model, system, training, inference)")
        if not self.ctx.quality.get("validation"):
            raise TrialUsageError("no validation quality: call trial.quality('validation', <metric>=...) "
                                  "(or return the score)")
        if self.objective_metric and self.objective_metric not in self.ctx.quality["validation"]:
            got = ", ".join(sorted(self.ctx.quality["validation"]))
            raise TrialUsageError(f"validation quality has no {self.objective_metric!r} (the experiment's metric); got {got}")
        self._check_needs(final=True)
        out, failures = {}, []
        for knob, value in self._ordered():  # every knob is judged; all that did not take effect are named
            try:
                out[knob.name] = {"value": value, **knob.verify(self.ctx, value)}
            except KnobError as exc:
                failures.append(str(exc))
        if failures:
            raise KnobError("; ".join(failures))
        return out

    def abort(self, error: BaseException) -> None:
        """The code raised: close the window it left open, so what it spent is still counted."""
        if self._open is not None:
            with contextlib.suppress(Exception):
                self.end_phase(self._open.name, failed=error)

    def release(self) -> None:
        """Remove every hook the trial installed (and the knobs' holds on the machine)."""
        for handle in self._handles:
            with contextlib.suppress(Exception):
                handle.remove()
        self._handles.clear()

    def safeguards(self) -> dict[str, str]:
        """Which of the search's safeguards this code lets act, in words (``validate --smoke``, the header)."""
        out = {}
        out["trivial_guard"] = "on" if self.has_trivial() else ("off: the code reports no trivial score -- pass the labels "
                                                       "(trial.labels(...)) or trial.trivial(...)")
        out["hopeless_stop"] = "on" if getattr(self, "_progress_asked", False) else (
            "off: the code never calls trial.check_progress(...) (the Hugging Face callback does)")
        out["phase_reuse"] = "on" if self._outputs else (
            "off: the code returns no phase outputs; run phases with trial.run_phase(name, fn, ...) to reuse them")
        return out


class _EpochLoop:
    """``range(n)`` that tells the trial while it is being iterated."""

    def __init__(self, trial: Trial, n: int):
        self.trial, self.n = trial, n

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        self.trial._epoch_loop_active = True
        try:
            yield from range(self.n)
        finally:
            self.trial._epoch_loop_active = False


# -- the trial a script asks for ----------------------------------------------------------------------------
_CURRENT: list[Trial] = []


@contextlib.contextmanager
def running(trial: Trial) -> Iterator[Trial]:
    """Make ``trial`` the one ``current_trial()`` returns while a script runs."""
    _CURRENT.append(trial)
    try:
        yield trial
    finally:
        _CURRENT.pop()


def current_trial() -> Trial:
    """The trial a script runs under (``pipeline: {script: train.py}``); run directly, outside a
    search, a standalone trial with no knob declared: nothing acts, phases are measured."""
    if _CURRENT:
        return _CURRENT[-1]
    from greenknobs.meters import create_meter
    from greenknobs.runtime import detect_runtime

    warnings.warn("greenknobs: no search is running; this trial runs at your code's own settings", stacklevel=2)
    trial = Trial({}, [], meter=create_meter("auto", {}), runtime=detect_runtime(), seed=0)
    _CURRENT.append(trial)
    return trial

