"""The define-by-run trial API on plain PyTorch code: knobs act on the objects the code hands over
and prove it from hooks; misuse is one clear line; a knob the code gave no chance to act fails
before the phase it matters for spends its energy."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from greenknobs.errors import KnobError, KnobNotApplied, TrialUsageError
from greenknobs.knobs import get_knob
from greenknobs.meters.cpu_model import CpuModelMeter
from greenknobs.pipeline import FunctionPipeline, execute_trial, in_process
from greenknobs.runtime import Runtime


class Block(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.linear = nn.Linear(width, width)

    def forward(self, h):
        return h + torch.relu(self.linear(h))


class TinyMLP(nn.Module):
    def __init__(self, width: int = 16, depth: int = 4):
        super().__init__()
        self.inp = nn.Linear(4, width)
        self.blocks = nn.ModuleList(Block(width) for _ in range(depth))
        self.out = nn.Linear(width, 1)

    def forward(self, x):
        h = self.inp(x)
        for b in self.blocks:
            h = b(h)
        return self.out(h).squeeze(-1)


def data(n: int, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return TensorDataset(x, x.sum(1))


def rmse(model, loader) -> float:
    model.eval()
    with torch.no_grad():
        se = sum(float(((model(x) - y) ** 2).sum()) for x, y in loader)
    return (se / len(loader.dataset)) ** 0.5


def regression(trial, *, hand_model=True, hand_optimizer=True, scheduler_first=False, warmup=False, phases=True):
    """A plain training script written for the trial API (the shape of examples/plain-pytorch-regression)."""
    start = trial.start_phase if phases else (lambda name: None)
    start("data")
    train = trial.train_loader(DataLoader(data(96), batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0)))
    val = trial.eval_loader(DataLoader(data(40, 1), batch_size=20))
    start("model")
    torch.manual_seed(0)
    model = TinyMLP()
    if hand_model:
        model = trial.model(model)
    start("training")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    if scheduler_first:
        torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    if hand_optimizer:
        opt = trial.optimizer(opt)
    epochs = trial.epochs(2)
    total = len(epochs) * len(train)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, (lambda s: min(1.0, s / 2)) if warmup else (lambda s: 1.0 - s / (total + 1)))
    for _ in epochs:
        model.train()
        for x, y in train:
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
            schedule.step()
            opt.zero_grad()
    start("inference")
    trial.quality("validation", rmse=rmse(model, val))
    start("test")
    trial.quality("test", rmse=rmse(model, DataLoader(data(40, 2), batch_size=20)))


RUNTIME = Runtime(device="cpu", cpu_count=2, gpu_count=0)


def run(fn, values: dict, **kwargs):
    pipeline = FunctionPipeline({"function": in_process(fn), "metric": "rmse", "direction": "minimize"})
    knobs = [(get_knob(name), value) for name, value in values.items()]
    meter = CpuModelMeter()
    try:
        return execute_trial(pipeline, knobs, meter, RUNTIME, seed=0, **kwargs)
    finally:
        meter.close()


ACTING = {"model.layers_removed": 2, "training.learning_rate": 3e-3, "training.epochs": 3,
          "system.train_batch_size": 16, "inference.batch_size": 8, "inference.quantization": "dynamic_int8",
          "system.threads": 1, "training.precision": "bf16", "training.freeze_layers": 1,
          "training.gradient_checkpointing": True}


@pytest.mark.parametrize("name", sorted(ACTING))
def test_a_knob_acts_on_plain_pytorch_objects_and_its_mutant_fails(name):
    """Each knob, at a non-default value, acts on what the script handed over (verification passes on
    hook evidence); with its mechanism switched off but its hooks kept, verification fails."""
    knob = get_knob(name)
    result, _ = run(regression, {name: ACTING[name]})
    assert result.verifications[name]["value"] == ACTING[name]
    type(knob).acting = False
    try:
        with pytest.raises(KnobError, match=name):
            run(regression, {name: ACTING[name]})
    finally:
        del type(knob).acting


def test_every_acting_knob_at_once_compounds_and_proves_each():
    result, _ = run(regression, ACTING)
    v = result.verifications
    assert v["model.layers_removed"]["blocks_ran"]["training"] == 2
    assert v["training.learning_rate"]["bases"] == [3e-3] and v["training.learning_rate"]["scheduled"]
    assert v["training.epochs"]["passes"] == 3
    assert v["system.train_batch_size"]["largest"] == 16
    assert v["inference.quantization"]["quantized_linears_served"] > 0
    assert v["inference.quantization"]["float_linears_served"] == 0
    assert v["training.precision"]["training_output"] == "torch.bfloat16"
    assert v["training.freeze_layers"]["frozen_blocks"] == 1


def test_the_learning_rate_follows_a_warm_up_schedule():
    """A warm-up makes the first step's rate 0: the evidence is the schedule's base at every step."""
    result, _ = run(lambda t: regression(t, warmup=True), {"training.learning_rate": 3e-3})
    ev = result.verifications["training.learning_rate"]
    assert ev["first"] == 0.0 and ev["peak"] == pytest.approx(3e-3) and ev["bases"] == [3e-3]


def test_an_optimizer_handed_over_after_its_scheduler_is_refused_with_the_reason():
    with pytest.raises(KnobNotApplied, match="before creating the scheduler"):
        run(lambda t: regression(t, scheduler_first=True), {"training.learning_rate": 3e-3})


def test_a_knob_whose_object_never_arrives_fails_before_training_spends_energy():
    phases = []
    result = None
    with pytest.raises(KnobNotApplied, match=r"model.layers_removed never got to act: it needs the model"):
        result = run(lambda t: regression(t, hand_model=False), {"model.layers_removed": 1},
                     progress=lambda phase, r: phases.append(phase))
    assert result is None and "training" not in phases  # refused at the end of the model phase


def test_the_optimizer_not_handed_over_fails_at_the_first_training_step():
    steps = []
    with pytest.raises(KnobNotApplied, match="training.learning_rate never got to act"):
        run(lambda t: regression(t, hand_optimizer=False), {"training.learning_rate": 3e-3},
            progress=lambda phase, r: steps.append((phase, r.details.get("aborted"))))
    assert ("training", True) in steps  # the training window closed as aborted: what it spent still counts


def test_the_held_out_window_is_measured_but_not_in_the_objective():
    result, _ = run(regression, {"training.epochs": 1})
    assert set(result.phases) == {"data", "model", "training", "inference"}  # no system phase: absent, not faked
    assert result.held_out is not None and result.held_out.energy_j > 0
    assert result.energy_j == pytest.approx(sum(p.energy_j for p in result.phases.values()))
    assert result.quality["test"]["rmse"] > 0


@pytest.mark.parametrize("code, message", [
    (lambda t: t.quality("validation", rmse=1.0), "never opened a phase"),
    (lambda t: (t.start_phase("training"), t.start_phase("inference"), t.start_phase("training")), "opened twice"),
    (lambda t: t.start_phase("training"), "no validation quality"),
    (lambda t: t.knob("user.undeclared"), "does not declare it and there is no default"),
    (lambda t: (t.start_phase("inference"), t.quality("validation", accuracy=0.9)), "has no 'rmse'"),
    (lambda t: t.start_phase("warmup"), "not a phase"),
])
def test_misuse_is_one_clear_line(code, message):
    with pytest.raises(TrialUsageError, match=message) as err:
        run(code, {})
    assert "\n" not in str(err.value)


def test_a_knob_asked_for_but_not_declared_is_at_its_default():
    seen = {}

    def code(trial):
        seen["lr"] = trial.knob("training.learning_rate")
        seen["mine"] = trial.knob("user.width", default=64)
        trial.start_phase("inference")
        trial.quality("validation", rmse=1.0)

    run(code, {})
    assert seen == {"lr": get_knob("training.learning_rate").default, "mine": 64}


def test_a_returned_score_is_the_validation_quality():
    def code(trial):
        with trial.phase("inference"):
            pass
        return 0.5

    result, _ = run(code, {})
    assert result.quality["validation"] == {"rmse": 0.5}


def test_the_progress_checks_scoring_is_not_charged_to_training():
    """The search's halfway check scores validation in a window of its own: the training phase's
    attributed energy excludes it (the baseline, which is never checked, pays the same)."""
    calls = []

    def check(fraction, score):
        if fraction >= 0.5 and not calls:
            calls.append(score())

    def code(trial):
        with trial.phase("training"):
            for i in range(4):
                torch.randn(300, 300) @ torch.randn(300, 300)
                trial.check_progress((i + 1) / 4, lambda: sum(float((torch.randn(400, 400) @ torch.randn(400, 400)).sum())
                                                              for _ in range(20)))
        trial.start_phase("inference")
        trial.quality("validation", rmse=1.0)

    result, _ = run(code, {}, progress_check=check)
    training = result.phases["training"]
    assert calls and training.details["excluded"][0]["why"] == "progress check"
    excluded = training.details["excluded"][0]["energy_j"]
    assert training.details["spent_j"] == pytest.approx(training.energy_j + excluded)


def test_phase_outputs_are_reused_for_function_pipelines(tmp_path):
    """Code that returns phase outputs from trial.run_phase gets them back in a later trial whose
    earlier phases would produce the same: a changed inference knob reuses the trained model."""
    from greenknobs.phase_store import PhaseStore

    ran = []

    def code(trial):
        loaders = trial.run_phase("data", lambda: (ran.append("data"), (data(64), data(20, 1)))[1])
        model = trial.run_phase("model", lambda: (ran.append("model"), trial.model(TinyMLP()))[1])

        def train(model):
            ran.append("training")
            opt = trial.optimizer(torch.optim.AdamW(model.parameters(), lr=1e-2))
            loader = trial.train_loader(DataLoader(loaders[0], batch_size=16))
            for _ in trial.epochs(1):
                for x, y in loader:
                    nn.functional.mse_loss(model(x), y).backward()
                    opt.step()
                    opt.zero_grad()
            return model

        model = trial.run_phase("training", train, model)
        trial.run_phase("inference", lambda: trial.quality("validation", rmse=rmse(model, DataLoader(loaders[1], batch_size=10))))

    store = PhaseStore(tmp_path / "reuse")
    values = {"training.learning_rate": 3e-3, "inference.quantization": "none"}
    first, _ = run(code, values, store=store, trial_number=0)
    assert first.reuse["status"] == "built" and first.reuse["published"]["training"] is True
    ran.clear()
    second, _ = run(code, {**values, "inference.quantization": "dynamic_int8"}, store=store, trial_number=1)
    assert ran == [] and second.reuse["status"] == "reused" and second.reuse["boundary"] == "training"
    assert second.verifications["training.learning_rate"]["bases"] == [3e-3]  # the stored evidence came back
    assert second.verifications["inference.quantization"]["quantized_linears_served"] > 0
    assert second.phases["training"].energy_j == first.phases["training"].energy_j  # attributed: what building it cost


def test_a_script_asks_for_its_trial(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(
        "import sys, greenknobs as gk\n"
        "trial = gk.current_trial()\n"
        "trial.start_phase('inference')\n"
        "trial.quality('validation', rmse=float(sys.argv[1]) * trial.knob('training.learning_rate'))\n")
    pipeline = FunctionPipeline(FunctionPipeline.validate_options(
        {"script": str(script), "args": [2], "metric": "rmse", "direction": "minimize"}))
    meter = CpuModelMeter()
    try:
        result, _ = execute_trial(pipeline, [], meter, RUNTIME, seed=0)
    finally:
        meter.close()
    assert result.quality["validation"]["rmse"] == pytest.approx(2 * get_knob("training.learning_rate").default)


def misbehaving(trial):
    """A function pipeline that misuses the trial for one knob value (width 2: a phase opened twice)."""
    width = trial.knob("standin.width")
    trial.record("standin_width_used", width)
    trial.record("standin_depth_used", trial.knob("standin.depth"))
    trial.start_phase("inference")
    if width == 2:
        trial.start_phase("inference")
    trial.quality("validation", score=width / 4)
    trial.start_phase("test")
    trial.quality("test", score=width / 4 - 0.01)


def test_a_misusing_trial_is_recorded_failed_and_the_search_goes_on(tmp_path, monkeypatch):
    """greenknobs.optimize on a function: the trial whose code misuses the API fails with its one
    line as the reason; the baseline and the other trials complete; the study is intact."""
    import yaml

    import greenknobs as gk
    from greenknobs.config import load_experiment_with_function
    from greenknobs.search import open_study

    monkeypatch.chdir(tmp_path)
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({
        "name": "misuse", "knobs": {
            "standin.width": {"class": "greenknobs.testing.standin:Width", "default": 4, "choices": [2, 3, 4]},
            "standin.depth": {"class": "greenknobs.testing.standin:Depth", "default": 8, "low": 1, "high": 8}},
        "objectives": {"quality": {"metric": "score", "direction": "maximize"}},
        "constraints": {"min_quality_retained": 0.5, "beat_trivial_by": None},
        "budget": {"trials": 3}, "sampler": "random", "meter": "cpu-model", "reuse": False,
        "storage": f"sqlite:///{tmp_path}/optuna.db", "mlflow_uri": f"sqlite:///{tmp_path}/mlflow.db"}))
    study = open_study(load_experiment_with_function(path, misbehaving))
    study.enqueue_trial({"standin.width": 4, "standin.depth": 8}, user_attrs={"baseline": True})
    study.enqueue_trial({"standin.width": 2, "standin.depth": 8})
    study.enqueue_trial({"standin.width": 3, "standin.depth": 8})
    gk.optimize(misbehaving, path, reporter=False)
    trials = {t.params["standin.width"]: t for t in open_study(load_experiment_with_function(path, misbehaving)).trials}
    assert trials[4].state.name == trials[3].state.name == "COMPLETE"
    assert trials[2].state.name == "FAIL" and "phase 'inference' opened twice" in trials[2].user_attrs["fail_reason"]


def served_without_a_steady_window(trial):
    """User code that serves its validation split in the inference phase and nothing more."""
    width = trial.knob("standin.width")
    trial.record("standin_width_used", width)
    trial.record("standin_depth_used", trial.knob("standin.depth"))
    trial.start_phase("inference")
    trial.quality("validation", score=width / 4)
    trial.start_phase("test")
    trial.quality("test", score=width / 4 - 0.01)


def test_per_1k_serving_energy_without_a_steady_window_is_said_not_silent(tmp_path, monkeypatch, capsys):
    """objectives.energy inference_per_1k on code that never measures steady-state serving: the
    figure falls back to the inference phase per prediction, and the trial and console say so."""
    import yaml

    import greenknobs as gk
    from greenknobs.search import open_study

    monkeypatch.chdir(tmp_path)
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({
        "name": "no-steady", "knobs": {
            "standin.width": {"class": "greenknobs.testing.standin:Width", "default": 4, "choices": [2, 4]},
            "standin.depth": {"class": "greenknobs.testing.standin:Depth", "default": 8, "low": 1, "high": 8}},
        "objectives": {"energy": "inference_per_1k", "quality": {"metric": "score", "direction": "maximize"}},
        "constraints": {"min_quality_retained": 0.5, "beat_trivial_by": None},
        "budget": {"trials": 1}, "sampler": "random", "meter": "cpu-model", "reuse": False,
        "storage": f"sqlite:///{tmp_path}/optuna.db", "mlflow_uri": f"sqlite:///{tmp_path}/mlflow.db"}))
    gk.optimize(served_without_a_steady_window, path)
    assert "never calls trial.serving_energy" in capsys.readouterr().out
    from greenknobs.config import load_experiment_with_function

    study = open_study(load_experiment_with_function(path, served_without_a_steady_window))
    (baseline,) = study.get_trials()
    assert baseline.state.name == "COMPLETE" and baseline.user_attrs["result"]["serving"] is None
    assert "never calls trial.serving_energy" in baseline.user_attrs["serving_fallback"]
