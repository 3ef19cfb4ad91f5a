"""inference.engine: serve the trained model with PyTorch eager, ONNX Runtime or OpenVINO.

How it combines with the other serving knobs: ``inference.quantization`` says *whether* the
served model is int8 and the engine says *whose* int8 -- PyTorch's dynamic int8 (torch.ao), ONNX
Runtime's dynamic or static (calibrated on training rows) quantisation, or NNCF's static
quantisation for OpenVINO. Settings that an exported graph cannot follow (early exit, torch.compile,
a serving cast other than OpenVINO's own bf16, bf16 weights, bitsandbytes layers) are refused before
the trial starts. ``inference.precision: bf16`` with OpenVINO is the plugin's bf16 inference
precision (AMX / AVX512-BF16 kernels), not a cast of the PyTorch model.
"""

from __future__ import annotations

from greenknobs.errors import IncompatibleKnobs
from greenknobs.knobs import watching
from greenknobs.knobs.base import Conflict, ObjectKnob, Space, register
from greenknobs.ml import engines
from greenknobs.ml.engines import EngineEvidence

_exported = lambda e: e != "torch"


@register
class InferenceEngine(ObjectKnob):
    name = "inference.engine"
    conflicts = (
        Conflict("inference.early_exit", _exported, lambda x: x != "off",
                 "early exit runs a truncated layer stack per batch; an exported graph runs the whole model"),
        Conflict("inference.compile", _exported, lambda c: c != "off",
                 "torch.compile and an exported engine both compile the serving forward: choose one"),
        Conflict("inference.precision", lambda e: e == "onnxruntime", lambda p: p != "fp32",
                 "ONNX Runtime serves the exported fp32 graph; its reduced precision is int8 (inference.quantization)"),
        Conflict("model.weight_dtype", _exported, lambda d: d != "fp32",
                 "the engines' CPU kernels serve fp32 or int8 graphs, not one exported with bf16/fp16 weights"),
        Conflict("model.quantized_load", _exported, lambda q: q != "none", "bitsandbytes layers do not export to ONNX"),
        Conflict("inference.quantization", lambda e: e == "openvino", lambda q: q == "dynamic_int8",
                 "OpenVINO's int8 path is NNCF's calibrated post-training quantisation: use static_int8"),
    )
    default = "torch"
    space = Space(choices=engines.ENGINES)
    value_devices = {"openvino": ("cpu",)}
    example = "onnxruntime"
    description = ("Serve the trained model with PyTorch eager, ONNX Runtime or OpenVINO: exported to ONNX once per "
                   "trial on its first serving call (export, quantisation and graph optimisation count as inference "
                   "energy), then every prediction runs in the engine's session (CUDA provider only on a GPU).")
    verifies = ("the engine and execution providers of the session that served every serving forward, the int8 and "
                "float matrix nodes its profiled first run executed, and PyTorch-vs-engine agreement on validation rows")
    watches = ("model",)
    needs = (("model",),)
    needs_hint = "the model: trial.model(model)"
    evidence_type = EngineEvidence

    def check(self, value, runtime):
        super().check(value, runtime)
        if value != self.default:
            ok = engines.availability(value, runtime.device)
            if not ok.available:
                raise IncompatibleKnobs(f"inference.engine={value!r}: {ok.reason}")

    def handed(self, kind, obj, value, trial):
        ev = trial.evidence(self)
        if watching.once(trial, self):
            def seen(phase, module, args, kwargs):
                ev.serving_forwards += 1

            watching.on_forward(trial, watching.SERVING, seen)

    def phase_started(self, phase, value, trial):
        model = trial.handed("model")
        if phase not in watching.SERVING or model is None or value == "torch" or not trial.may_act(self, "model", model):
            return
        ctx = trial.ctx
        trial.scratch(self)["close"] = engines.serve_through(
            model, value, ctx.settings.get("inference.quantization", "none"), trial.evidence(self),
            precision=ctx.settings.get("inference.precision", "fp32"),
            phase=lambda: trial.current_phase, device=trial.runtime.device, calibration=ctx.extras.get("calibration"),
            pad_id=ctx.pad_id or 0)

    def release(self, ctx, value):
        # the trial is over: the model serves with its own forward again, the engine's session is freed
        trial = getattr(ctx, "trial", None)
        close = trial.scratch(self).pop("close", None) if trial is not None else None
        if close is not None:
            close()

    def judge(self, value, ev, ctx):
        if not ev.serving_forwards:
            return "no serving forward pass was watched"
        if value == "torch":
            return f"{ev.session_runs} forwards ran in an {ev.engine} session" if ev.session_runs else None
        if ev.engine != value:
            return f"served by {ev.engine or 'PyTorch eager'}, not {value}"
        if ev.session_runs < ev.serving_forwards:
            return f"only {ev.session_runs} of {ev.serving_forwards} serving forwards ran in the {value} session"
        if not ev.ran or not ev.ran.get("nodes_ran"):
            return "the session's profiled run recorded no executed node"
        build = ev.build or {}
        return engines.disagreement(ev, build.get("quantization", "none"), build.get("precision", "fp32"))

    def report(self, value, ev, ctx):
        out = {"engine": ev.engine or "torch", "session": ev.session, "providers": ev.providers,
               "serving_forwards": ev.serving_forwards, "session_runs": ev.session_runs}
        if ev.engine:
            out.update(export=ev.export, build=ev.build, ran=ev.ran, agreement=ev.agreement,
                       calibration_rows=ev.calibration_rows)
        return out
