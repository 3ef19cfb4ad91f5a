"""Inference-phase knobs: how the trained model is served for evaluation."""

from __future__ import annotations

from dataclasses import dataclass

from greenknobs.errors import ConfigError
from greenknobs.knobs import watching
from greenknobs.knobs.base import Conflict, ObjectKnob, Requires, SettingKnob, Space, register
from greenknobs.knobs.system import BatchEvidence, CompileKnob, _batch_knob_handed, _judge_batches
from greenknobs.knobs.training import FP16_NEEDS_CUDA
from greenknobs.ml import instruments
from greenknobs.ml.precision import DTYPES, cast_model
from greenknobs.ml.quantize import count_linears, quantize_dynamic_int8_


@register
class InferenceBatchSize(ObjectKnob):
    name = "inference.batch_size"
    default = 32
    space = Space(choices=(8, 16, 32, 64, 128))
    bounds = (1, None)
    example = 8
    description = ("Examples per inference forward pass: the batch size of a DataLoader handed to trial.eval_loader(), "
                   "or TrainingArguments.per_device_eval_batch_size.")
    verifies = "rows of the largest batch a forward pass serving validation received (a forward pre-hook)"
    acts_on = ("eval_loader", "training_args")
    watches = ("model",)
    needs = (("eval_loader", "model"), ("training_args", "model"))
    needs_hint = "the DataLoader that serves predictions: trial.eval_loader(loader) (or trial.training_args(args)), and the model"
    evidence_type = BatchEvidence

    def handed(self, kind, obj, value, trial):
        # judged where the objective is served (validation); the held-out window may serve as it likes
        return _batch_knob_handed(self, kind, obj, value, trial, "eval_loader", "per_device_eval_batch_size",
                                  ("inference",))

    def judge(self, value, ev, ctx):
        return _judge_batches(value, ev)


@dataclass
class ServingEvidence:
    linears_before: int | None = None  # nn.Linear modules of the model as serving began
    quantized_ran: int | None = None  # int8 Linear modules whose forward ran in the first serving forward
    float_linears_ran: int | None = None
    output_dtype: str | None = None  # dtype of the first serving forward's output
    weights: str | None = None


def _watch_serving(knob: ObjectKnob, trial) -> None:
    """One probe per trial on the first serving forward: which Linear kinds ran, the output dtype."""
    ev = trial.evidence(knob)
    if not watching.once(trial, knob):
        return

    def start(phase, module, args, kwargs):
        quantized, floats = instruments.linear_modules(module)
        return instruments.count_calls(quantized), instruments.count_calls(floats)

    def finish(phase, state, module, output):
        (q_counts, q_handles), (f_counts, f_handles) = state
        for h in (*q_handles, *f_handles):
            h.remove()
        if ev.quantized_ran is None:
            ev.quantized_ran, ev.float_linears_ran = sum(1 for c in q_counts if c), sum(1 for c in f_counts if c)
            ev.output_dtype = instruments.output_dtype(output)

    watching.on_first_forward(trial, watching.SERVING, start, finish)


@register
class Quantization(ObjectKnob):
    name = "inference.quantization"
    conflicts = (Conflict("inference.engine", lambda q: q == "static_int8", lambda e: e == "torch",
                          "static int8 (activation ranges calibrated on training rows) is the exported engines' path: "
                          "inference.engine onnxruntime or openvino"),)
    default = "none"
    space = Space(choices=("none", "dynamic_int8", "static_int8"))
    devices = ("cpu",)  # PyTorch's dynamic int8 kernels (fbgemm/qnnpack) are CPU-only
    example = "dynamic_int8"
    description = ("int8 serving. With inference.engine torch: dynamic int8 of every nn.Linear of the handed-over "
                   "model, in place, as serving starts (torch.ao). With an exported engine, the engine's own tooling "
                   "quantises the exported graph: ONNX Runtime dynamic_int8 or static_int8 (QDQ, calibrated on "
                   "training rows), OpenVINO static_int8 (NNCF, calibrated on training rows).")
    verifies = ("int8 and float Linear modules whose forward ran in the first serving forward pass (forward hooks); "
                "with an engine, the int8 nodes (dynamic or static kernels) its profiled first run executed")
    watches = ("model",)
    needs = (("model",),)
    needs_hint = "the model: trial.model(model)"
    evidence_type = ServingEvidence

    def handed(self, kind, obj, value, trial):
        _watch_serving(self, trial)

    def phase_started(self, phase, value, trial):
        model = trial.handed("model")
        if phase not in watching.SERVING or model is None:
            return
        ev = trial.evidence(self)
        if ev.linears_before is None:
            ev.linears_before = count_linears(model)
        # with an exported engine, the engine quantises the exported graph (it reads this knob's setting)
        if value == "dynamic_int8" and _engine(trial.ctx) == "torch" and trial.may_act(self, "model", model):
            quantize_dynamic_int8_(model)

    def judge(self, value, ev, ctx):
        served = ctx.evidence.get("inference.engine")
        if served is not None and served.engine is not None:  # an exported engine served: judge its graph
            ran = served.ran or {}
            n, kind = ran.get("int8_nodes_ran", 0), ran.get("int8_kind")
            if value == "none":
                return f"{n} int8 nodes ran in the {served.engine} graph without quantisation" if n else None
            want = value.split("_")[0]
            return None if n and kind == want else f"the {served.engine} graph ran {n} int8 nodes ({kind or 'none'}), not {want}"
        if value == "static_int8":
            return "static int8 needs an exported engine; PyTorch eager served"
        if ev.quantized_ran is None:
            return "no serving forward pass was watched"
        if value == "none":
            return f"{ev.quantized_ran} int8 Linear modules served without quantisation" if ev.quantized_ran else None
        if not ev.quantized_ran or ev.float_linears_ran:
            return f"{ev.quantized_ran} int8 and {ev.float_linears_ran} float Linear modules served"
        return None

    def report(self, value, ev, ctx):
        return {"quantized_linears_served": ev.quantized_ran, "float_linears_served": ev.float_linears_ran,
                "linear_modules": ev.linears_before}


def _engine(ctx) -> str:
    return ctx.settings.get("inference.engine", "torch")


@register
class InferencePrecision(ObjectKnob):
    name = "inference.precision"
    conflicts = (Conflict("inference.quantization", lambda p: p != "fp32", lambda q: q == "dynamic_int8",
                          "dynamic int8 kernels take fp32 activations"),)
    default = "fp32"
    space = Space(choices=tuple(DTYPES))
    value_devices = FP16_NEEDS_CUDA
    example = "bf16"
    description = ("Cast the trained model (in place) to this dtype as serving starts (bf16 on CPU or GPU; fp16 on GPU "
                   "only). With inference.engine openvino, bf16 is the plugin's inference precision instead (AMX / "
                   "AVX512-BF16 kernels; with static_int8, the ops left in float).")
    verifies = ("dtype of the output of the first serving forward pass; with OpenVINO, the bf16 kernels its profiled "
                "first run executed")
    watches = ("model",)
    needs = (("model",),)
    needs_hint = "the model: trial.model(model)"
    evidence_type = ServingEvidence

    def handed(self, kind, obj, value, trial):
        _watch_serving(self, trial)

    def phase_started(self, phase, value, trial):
        model = trial.handed("model")
        if phase not in watching.SERVING or model is None:
            return
        ev = trial.evidence(self)
        if ev.weights is None:
            ev.weights = instruments.floating_dtype(model)
        # an exported engine runs the graph in its own precision (it reads this knob's setting)
        if value != "fp32" and _engine(trial.ctx) == "torch" and trial.may_act(self, "model", model):
            cast_model(model, value)
            if trial.ctx.exit_head is not None:
                cast_model(trial.ctx.exit_head, value)

    def judge(self, value, ev, ctx):
        served = ctx.evidence.get("inference.engine")
        if served is not None and served.engine is not None:  # an exported engine served: judge its kernels
            n = (served.ran or {}).get("bf16_nodes_ran")
            if n is None:  # ONNX Runtime: the exported graph's float nodes are fp32 (it is refused bf16)
                return None if value == "fp32" else f"the {served.engine} session records no per-node precision"
            if value == "fp32":
                return f"{n} nodes ran in bf16 in the {served.engine} graph" if n else None
            return None if n else (f"no node of the {served.engine} graph ran in {value} (does this CPU have "
                                   "AVX512-BF16 or AMX?)")
        if ev.output_dtype is None:
            return "no serving forward pass was watched"
        want = str(DTYPES[value])
        # a bf16-stored model (model.weight_dtype) already serves in bf16; fp32 then means "not cast further"
        ok = ev.output_dtype == want or (value == "fp32" and ev.output_dtype == ev.weights)
        return None if ok else f"serving output was {ev.output_dtype}"

    def report(self, value, ev, ctx):
        served = ctx.evidence.get("inference.engine")
        if served is not None and served.engine is not None:
            return {"engine": served.engine, "bf16_nodes_ran": (served.ran or {}).get("bf16_nodes_ran"),
                    "nodes_ran": (served.ran or {}).get("nodes_ran")}
        return {"inference_output_dtype": ev.output_dtype}


@register
class InferenceCompile(CompileKnob):
    name = "inference.compile"
    conflicts = (Conflict("inference.early_exit", lambda c: c != "off", lambda e: e != "off",
                          "early exit runs a truncated layer stack, which a compiled graph cannot follow"),)
    description = ("torch.compile the trained model for inference (Inductor, dynamic shapes); compile time counts as "
                   "inference energy.")
    verifies = "graphs compiled and calls into compiled code during inference (a counting compiler backend)"
    compiled_phases = watching.SERVING


@register
class InferenceSeqLen(SettingKnob):
    name = "inference.seq_len"
    default = 0
    space = Space(choices=(0, 32, 64, 128, 256))
    bounds = (0, None)
    example = 8
    description = ("Tokens per inference input: classifiers cut each test input to this length; language models "
                   "evaluate perplexity in blocks of this length (0 = as trained / the pipeline's evaluation length).")
    verifies = "longest inference input (classification) or evaluation block length (language model)"
    evidence = ("inference_longest_input",)

    def validate_value(self, value: int, key: str) -> None:
        if value != 0 and value < 8:
            raise ConfigError(key, f"must be 0 (as trained) or at least 8 tokens, got {value}")

    def _limit(self, value, ctx) -> int:
        # 0: the pipeline's own evaluation length (a LM's fixed block) or, for classifiers, data.max_seq_len
        return value or ctx.observed.get("inference_default_len") or ctx.setting("data.max_seq_len")

    def judge(self, value, seen, ctx):
        longest, limit = seen["inference_longest_input"], self._limit(value, ctx)
        if longest > limit:
            return f"an inference input of {longest} tokens, limit {limit}"
        block = ctx.observed.get("inference_block_len")
        return f"perplexity evaluated in blocks of {block}" if block is not None and block != limit else None

    def report(self, value, seen, ctx):
        out = {**seen, "inference_limit": self._limit(value, ctx)}
        if ctx.observed.get("inference_block_len") is not None:  # language model: blocks are exactly this long
            out["inference_block_len"] = ctx.observed.get("inference_block_len")
        return out


@register
class EarlyExit(SettingKnob):
    name = "inference.early_exit"
    requires = Requires(("training.exit_head_depth",), lambda v: v["training.exit_head_depth"] > 0,
                        "training.exit_head_depth > 0 (the exit head is trained in the training phase)", True)
    default = "off"
    space = Space(choices=("off", 0.99, 0.95, 0.9, 0.8))
    value_type = (str, float)
    example = 0.95
    example_with = {"training.exit_head_depth": 0.5}
    description = ("Confidence-based early exit: answer from the exit head (training.exit_head_depth) when its top "
                   "probability >= this threshold; the later blocks then do not run. Needs the exit head.")
    verifies = ("rows answered at the exit vs by the full model (exit rate); every exited row's exit-head confidence "
                "is at or above the threshold and every other row's below it")
    evidence = ("early_exit",)

    def validate_value(self, value, key: str) -> None:
        if isinstance(value, str):
            if value != "off":
                raise ConfigError(key, f"expected 'off' or a probability threshold, got {value!r}")
        elif not 0.0 < value < 1.0:
            raise ConfigError(key, f"threshold must be in (0, 1), got {value}")

    def judge(self, value, seen, ctx):
        ev = seen["early_exit"]
        if value == "off":
            return "the truncated model ran with early exit off" if ev["truncated_passes"] else None
        if not (ev["truncated_passes"] > 0 and ev["exited"] + ev["full"] == ev["rows"]):
            return f"exit accounting does not add up: {ev}"
        low, high = ev["min_confidence_exited"], ev["max_confidence_full"]
        if low is not None and low < value:
            return f"a row exited at confidence {low:.4f}, below the threshold {value}"
        if high is not None and high >= value:
            return f"a row at confidence {high:.4f} ran the full model although the threshold is {value}"
        return None

    def report(self, value, seen, ctx):
        return seen["early_exit"]
