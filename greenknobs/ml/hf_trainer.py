"""A Hugging Face ``Trainer`` under a trial: its arguments prepared for the knobs, its events
turned into the trial's (the training window, optimizer steps, epochs, the progress check,
the scores ``evaluate`` returns).

    args = trial.training_args(TrainingArguments(...))     # knobs set their fields
    trainer = trial.trainer(Trainer(model=model, args=args, ...))
    trainer.train()                                          # the training window opens and closes itself
    with trial.phase("inference"):
        trainer.evaluate()                                   # eval_<metric> -> validation quality
    with trial.held_out():
        trainer.evaluate(test_dataset, metric_key_prefix="test")   # -> test quality
"""

from __future__ import annotations

from typing import Any

from greenknobs.errors import TrialUsageError
from greenknobs.ml import hf

# classification metrics whose trivial scores greenknobs computes from a dataset's labels
_LABEL_METRICS = ("macro_f1", "accuracy", "f1")


def prepare_args(args: Any, trial: Any) -> Any:
    """Arguments a Trainer will run a trial with: artefacts into the trial's folder (kept or
    cleaned by the experiment's policy), no reporting of its own (greenknobs logs to MLflow),
    a few steps only in a smoke run."""
    if not hf.is_training_arguments(args):
        raise TrialUsageError(f"trial.training_args(): expected transformers.TrainingArguments, got {type(args).__name__}")
    if trial.workdir is not None:
        args.output_dir = str(trial.workdir / "trainer")
    args.report_to = []  # HF's own MLflow callback would write into greenknobs' runs
    if trial.smoke:
        args.max_steps = 2
    return args


def attach(trainer: Any, trial: Any) -> Any:
    """Put the trial's callback on ``trainer``; hand over its arguments if the code did not (the
    Trainer's accelerator is then rebuilt, so a precision the knobs set takes effect)."""
    if not hf.is_trainer(trainer):
        raise TrialUsageError(f"trial.trainer(): expected a transformers.Trainer, got {type(trainer).__name__}")
    if trial.handed("training_args") is not trainer.args:
        trial.training_args(trainer.args)
        trainer.create_accelerator_and_postprocess()
    trainer.add_callback(make_callback(trial, trainer))
    metric = trial.objective_metric
    if metric in _LABEL_METRICS and not trial.has_trivial():
        train, val = _labels(trainer.train_dataset), _labels(trainer.eval_dataset)
        if train is not None and val is not None:
            trial.labels(train=train, validation=val)
    return trainer


def _labels(dataset: Any) -> list[Any] | None:
    names = getattr(dataset, "column_names", None) or []
    for column in ("labels", "label"):
        if column in names:
            return list(dataset[column])
    return None


def make_callback(trial: Any, trainer: Any = None) -> Any:
    base = hf.trainer_callback_base()

    class GreenknobsCallback(base):  # type: ignore[misc, valid-type]
        """Trainer events -> the trial's: windows, watched objects, epochs, progress, scores."""

        def __init__(self) -> None:
            self.opened = False

        def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
            if trial.current_phase != "training":  # the training window, unless the code opened it already
                if trial.in_with_block:
                    raise TrialUsageError(f"trainer.train() ran inside `with trial.phase({trial.current_phase!r})`")
                trial.start_phase("training")
                self.opened = True
            if model is not None and trial.handed("model") is None:
                trial.watch(model)  # watched for evidence; the model knobs never acted on it (they fail, saying so)
            trial.hand_over("trainer", state)
            if optimizer is not None:
                trial.optimizer(optimizer)

        def on_step_end(self, args, state, control, **kwargs):
            if trainer is not None and trial.objective_metric:
                trial.check_progress(state.global_step / max(state.max_steps, 1), self._score)

        def _score(self) -> float:
            metrics = trainer.evaluate()
            key = f"eval_{trial.objective_metric}"
            if key not in metrics:
                raise TrialUsageError(f"the progress check needs {key!r} from trainer.evaluate(); its compute_metrics "
                                      f"returned {sorted(metrics)}")
            return float(metrics[key])

        def on_epoch_end(self, args, state, control, **kwargs):
            trial.emit("epoch_end", state.epoch)

        def on_train_end(self, args, state, control, **kwargs):
            if self.opened:
                self.opened = False
                trial.end_phase("training")

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            phase = trial.current_phase
            if not metrics or phase not in ("inference", "test"):
                return  # evaluations during training (eval_strategy, the progress check) steer nothing
            split = "validation" if phase == "inference" else "test"
            scores = {}
            for key, value in metrics.items():
                prefix, _, name = key.partition("_")
                if prefix in ("eval", "test") and isinstance(value, (int, float)) and name not in (
                        "runtime", "samples_per_second", "steps_per_second"):
                    scores[name] = float(value)
            if scores:
                trial.quality(split, **scores)

    return GreenknobsCallback()
