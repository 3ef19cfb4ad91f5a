"""Serve a handed-over PyTorch model through an inference engine (ONNX Runtime, OpenVINO).

The model's ``forward`` is replaced on the instance (its hooks still run around it, so the code
that serves it and the knobs that watch it see a model as before). Its first call inside a serving
window exports the graph from that call's inputs (greenknobs.ml.export), quantises it with the
engine's own tooling when asked, builds the engine's session -- all inside the measured window --
and then every call runs the session. While validation is served, the first ``AGREEMENT_ROWS``
rows are also predicted by the PyTorch model itself (hooks off) and compared: the evidence that
the engine serves the same model, within the tolerance stated below.
"""

from __future__ import annotations

import importlib
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from greenknobs.errors import KnobError
from greenknobs.ml import export, instruments
from greenknobs.phases import Availability

ENGINES = ("torch", "onnxruntime", "openvino")
_MODULES = {"onnxruntime": ("greenknobs.ml.onnx_engine", "OrtServer"),
            "openvino": ("greenknobs.ml.openvino_engine", "OpenVinoServer")}
AGREEMENT_ROWS = 32  # validation rows predicted by both, PyTorch and the engine
FP32_TOLERANCE = 1e-3  # |logit difference| <= this x max(1, largest |logit|): float reordering, not a different model
INT8_MIN_AGREEMENT = 0.9  # int8 may move near-ties; the objective's own F1 judges the quality
CALIBRATION_ROWS, CALIBRATION_BATCH = 64, 8  # training rows static int8 calibrates activation ranges on
TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass
class EngineOutput:
    """What a Hugging Face classifier's forward returns, as far as serving reads it."""

    logits: torch.Tensor
    loss: None = None

    def __getitem__(self, i: int) -> torch.Tensor:
        return (self.logits,)[i]


@dataclass
class EngineEvidence:
    engine: str | None = None  # the engine of the session that served (read off the server object)
    session: str | None = None  # its session type (InferenceSession, CompiledModel)
    providers: list[str] = field(default_factory=list)  # execution providers / devices of that session
    serving_forwards: int = 0  # forwards of the model in serving windows (the trial's root hook)
    session_runs: int = 0  # of those, the ones the engine's session ran
    export: dict[str, Any] | None = None
    build: dict[str, Any] | None = None  # session facts: version, threads, quantisation, graph optimisation
    ran: dict[str, Any] | None = None  # the profiled first run: int8 / float matmul nodes, providers
    agreement: dict[str, Any] | None = None  # PyTorch vs engine on validation rows
    calibration_rows: int = 0


def availability(engine: str, device: str) -> Availability:
    if engine == "torch":
        return Availability(True)
    try:
        module = importlib.import_module(_MODULES[engine][0])
    except ImportError as exc:  # the engine's own import failed at module level
        return Availability(False, f"{engine} cannot be imported: {exc}")
    return module.available(device)


def serve_through(model: torch.nn.Module, engine: str, quantization: str, ev: EngineEvidence, *,
                  phase: Callable[[], str | None], device: str, calibration: Sequence[dict[str, Any]] | None,
                  pad_id: int, precision: str = "fp32") -> Callable[[], None]:
    """From now on ``model`` serves through ``engine`` (built lazily, on its first serving call).
    Returns the undo: the model's own forward back, the engine's session freed."""
    original = model.forward  # the bound class forward (or whatever an earlier knob installed)
    state: dict[str, Any] = {}

    def forward(*args: Any, **kwargs: Any) -> Any:
        kwargs.pop("labels", None)  # a served graph computes no loss
        if "server" not in state:
            _build(state, model, original, engine, quantization, precision, ev, args, kwargs, device, calibration, pad_id)
        sig, server = state["sig"], state["server"]
        named = [n for n in sig.names if not n.startswith("arg")]
        if len(args) != len(sig.names) - len(named) or any(n not in kwargs for n in named):
            raise KnobError(f"inference.engine: the model was exported for inputs ({', '.join(sig.names)}) and is now called "
                            f"with {len(args)} positional and ({', '.join(kwargs)}) keyword inputs; serve it the same way")
        tensors = list(args) + [kwargs[n] for n in named]
        feeds = {n: t.detach().cpu().numpy() for n, t in zip(sig.names, tensors)}
        out = torch.from_numpy(server.run(feeds)).to(tensors[0].device if tensors else "cpu")
        if server.ran is not None and ev.ran is None:
            ev.ran = server.ran
            shutil.rmtree(state["workdir"], ignore_errors=True)  # the profile was the last thing read from it
        where, reference = phase(), state.pop("first_reference", None)  # (this call's batch, on the first call only)
        if where in ("inference", "test", "serving"):
            ev.session_runs += 1
        if where == "inference" and (ev.agreement or {}).get("rows", 0) < AGREEMENT_ROWS:
            _compare(ev, original, args, kwargs, out, quantization, precision, reference)
        return EngineOutput(out) if sig.logits_attr else out

    restore = instruments.replace_forward(model, forward)

    def close() -> None:
        restore()
        if "workdir" in state:
            shutil.rmtree(state["workdir"], ignore_errors=True)
        state.clear()  # the session (its threads and memory) goes with the last reference

    return close


def _build(state: dict[str, Any], model: torch.nn.Module, original: Any, engine: str, quantization: str,
           precision: str, ev: EngineEvidence, args: tuple, kwargs: dict, device: str, calibration: Sequence[dict[str, Any]] | None,
           pad_id: int) -> None:
    model.eval()
    with torch.no_grad(), instruments.hooks_removed([model]):
        probe = original(*args, **kwargs)  # what the forward returns: `.logits`, or a tensor
    workdir = Path(tempfile.mkdtemp(prefix="greenknobs-engine-"))
    try:
        sig, ev.export = export.export_onnx(model, original, args, kwargs, workdir / "model.onnx",
                                            output_has_logits=torch.is_tensor(getattr(probe, "logits", None)))
        feeds = None
        if quantization == "static_int8":
            feeds = calibration_feeds(calibration, sig.names, pad_id)
            ev.calibration_rows = sum(len(f[sig.names[0]]) for f in feeds)
        module_name, cls_name = _MODULES[engine]
        server_cls = getattr(importlib.import_module(module_name), cls_name)
        extra = {"transformer": "input_ids" in sig.names, "precision": precision} if engine == "openvino" else {}
        server = server_cls(workdir / "model.onnx", quantization, feeds, device, torch.get_num_threads(), workdir, **extra)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    # the probe already is PyTorch's prediction of the first batch: the agreement check reuses it
    state.update(sig=sig, server=server, workdir=workdir, first_reference=export.served_tensor(probe))
    ev.engine, ev.providers = server.engine, list(server.facts["providers"])
    ev.session = type(getattr(server, "session", None) or getattr(server, "compiled", None)).__name__
    ev.build = dict(server.facts)


def calibration_feeds(rows: Sequence[dict[str, Any]] | None, names: Sequence[str], pad_id: int) -> list[dict[str, np.ndarray]]:
    """Padded batches of tokenised training rows, as the exported graph takes them."""
    if not rows:
        raise KnobError("inference.quantization=static_int8 needs training rows to calibrate on: hand them over with "
                        "trial.model(model, calibration=rows)")
    unknown = [n for n in names if n not in TOKEN_INPUTS]
    if unknown:
        raise KnobError(f"inference.quantization=static_int8 calibrates token models (input_ids, attention_mask); "
                        f"this model takes {', '.join(unknown)}")
    out = []
    chosen = list(rows[:CALIBRATION_ROWS])
    for s in range(0, len(chosen), CALIBRATION_BATCH):
        seqs = [list(r["input_ids"]) for r in chosen[s: s + CALIBRATION_BATCH]]
        width = max(len(q) for q in seqs)
        ids: np.ndarray = np.full((len(seqs), width), pad_id, dtype=np.int64)
        mask: np.ndarray = np.zeros((len(seqs), width), dtype=np.int64)
        for i, q in enumerate(seqs):
            ids[i, : len(q)], mask[i, : len(q)] = q, 1
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        out.append({n: feed[n] for n in names})
    return out


def _compare(ev: EngineEvidence, original: Any, args: tuple, kwargs: dict, served: torch.Tensor,
             quantization: str, precision: str = "fp32", reference: torch.Tensor | None = None) -> None:
    """The PyTorch model's own prediction of the same rows (hooks off: it is a check, not serving)."""
    start = time.perf_counter()
    if reference is None:
        with torch.no_grad(), instruments.hooks_removed([getattr(original, "__self__", None)]):
            reference = export.served_tensor(original(*args, **kwargs))
    ref = reference.float()
    got = served.float()
    a = ev.agreement or {"rows": 0, "argmax_agree": 0, "max_abs_diff": 0.0, "largest_logit": 0.0, "check_s": 0.0}
    a["rows"] += int(ref.shape[0])
    a["argmax_agree"] += int((ref.argmax(-1) == got.argmax(-1)).sum()) if ref.dim() > 1 else int(ref.shape[0])
    a["max_abs_diff"] = max(a["max_abs_diff"], float((ref - got).abs().max()))
    a["largest_logit"] = max(a["largest_logit"], float(ref.abs().max()))
    a["check_s"] = round(a["check_s"] + time.perf_counter() - start, 4)
    a["tolerance"] = tolerance(quantization, precision)
    ev.agreement = a


def tolerance(quantization: str, precision: str = "fp32") -> str:
    if quantization == "none" and precision == "fp32":
        return f"|logit diff| <= {FP32_TOLERANCE:g} x max(1, largest |logit|)"
    return f"argmax agrees on >= {INT8_MIN_AGREEMENT:.0%} of rows"


def disagreement(ev: EngineEvidence, quantization: str, precision: str = "fp32") -> str | None:
    """None when the engine's predictions agree with PyTorch's within the stated tolerance (exact
    logits for fp32, the argmax for int8 or bf16, which round every matmul)."""
    a = ev.agreement
    if not a or not a["rows"]:
        return "no validation rows were compared with the PyTorch model"
    if quantization == "none" and precision == "fp32":
        limit = FP32_TOLERANCE * max(1.0, a["largest_logit"])
        if a["max_abs_diff"] > limit:
            return f"engine logits differ from PyTorch's by {a['max_abs_diff']:.3g} (> {limit:.3g}) on {a['rows']} validation rows"
        return None
    rate = a["argmax_agree"] / a["rows"]
    if rate < INT8_MIN_AGREEMENT:
        kind = "int8" if quantization != "none" else precision
        return f"{kind} engine agrees with PyTorch on {rate:.0%} of {a['rows']} validation rows (< {INT8_MIN_AGREEMENT:.0%})"
    return None
