"""ONNX Runtime serving (this module is the one that imports onnxruntime and onnx).

A session is built from the exported graph (greenknobs.ml.export), optionally quantised to int8 by
ONNX Runtime's own tooling -- ``quantize_dynamic`` (int8 weights, activation scales computed per
call) or ``quantize_static`` (QDQ, activation scales calibrated on training rows) -- with every
graph optimisation on. Its first run is profiled (``enable_profiling``): the node events name the
operator and execution provider of every node that ran, which is what the knobs judge.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from greenknobs.phases import Availability

ENGINE = "onnxruntime"
# int8 compute kernels; dynamic ones quantise activations per call, static ones use calibrated scales
DYNAMIC_INT8_OPS = frozenset({"MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "ConvInteger", "QAttention"})
STATIC_INT8_OPS = frozenset({"QLinearMatMul", "QGemm", "QLinearConv"})
FLOAT_MATMUL_OPS = frozenset({"MatMul", "FusedMatMul", "Gemm", "FusedGemm", "Conv", "FusedConv", "Attention"})


def available(device: str = "cpu") -> Availability:
    try:
        import onnxruntime as ort
        import onnxruntime.quantization  # int8 needs it (part of the same wheel)
    except ImportError as exc:
        return Availability(False, f"onnxruntime is not installed ({exc}); pip install onnxruntime")
    if device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
        return Availability(False, "this onnxruntime build has no CUDAExecutionProvider (pip install onnxruntime-gpu)")
    return Availability(True)


class OrtServer:
    """One InferenceSession serving the exported graph."""

    engine = ENGINE

    def __init__(self, onnx_path: Path, quantization: str, calibration: list[dict[str, np.ndarray]] | None,
                 device: str, threads: int, workdir: Path):
        import onnxruntime as ort

        start = time.perf_counter()
        path = _quantised(onnx_path, quantization, calibration, workdir)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1  # system.threads holds for the engine too
        opts.enable_profiling, opts.profile_file_prefix = True, str(workdir / "ort-profile")
        opts.log_severity_level = 3  # the optimiser's notes about hardware-specific fusions are not errors
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(path), opts, providers=providers)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.runs = 0
        self.ran: dict[str, Any] | None = None  # what the profiled first run executed
        self.facts = {"engine": ENGINE, "version": ort.__version__, "providers": self.session.get_providers(),
                      "graph_optimization": "ORT_ENABLE_ALL", "threads": threads, "quantization": quantization,
                      "build_s": round(time.perf_counter() - start, 3)}

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        out = self.session.run(None, {k: feeds[k] for k in self.input_names})[0]
        self.runs += 1
        if self.ran is None:
            self.ran = _profiled_nodes(Path(self.session.end_profiling()))
        return out


def _quantised(onnx_path: Path, quantization: str, calibration: list[dict[str, np.ndarray]] | None,
               workdir: Path) -> Path:
    if quantization == "none":
        return onnx_path
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static

    out = workdir / f"model-{quantization}.onnx"
    logging.getLogger().setLevel(max(logging.getLogger().level, logging.ERROR))  # its advice on pre-processing
    if quantization == "dynamic_int8":
        quantize_dynamic(str(onnx_path), str(out), weight_type=QuantType.QInt8)
        return out
    if not calibration:
        raise ValueError("static int8 needs calibration inputs (training rows)")

    class Reader(CalibrationDataReader):
        def __init__(self, feeds: Iterable[dict[str, np.ndarray]]):
            self.feeds = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.feeds, None)

    # the Linear layers (MatMul/Gemm), as the PyTorch int8 path quantises; QDQ is what the CPU EP fuses
    quantize_static(str(onnx_path), str(out), Reader(calibration), quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=["MatMul", "Gemm"], activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    return out


def _profiled_nodes(profile: Path) -> dict[str, Any]:
    """Operators and providers of the nodes the profiled run executed (the file is removed)."""
    events = json.loads(profile.read_text())
    profile.unlink(missing_ok=True)
    ops: Counter[str] = Counter()
    providers: Counter[str] = Counter()
    for e in events:
        if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time"):
            ops[e["args"]["op_name"]] += 1
            providers[e["args"].get("provider", "?")] += 1
    return summarise(ops, providers)


def summarise(ops: Counter[str], providers: Counter[str]) -> dict[str, Any]:
    dynamic = sum(n for op, n in ops.items() if op in DYNAMIC_INT8_OPS)
    static = sum(n for op, n in ops.items() if op in STATIC_INT8_OPS)
    return {"nodes_ran": sum(ops.values()), "int8_nodes_ran": dynamic + static,
            "int8_kind": "static" if static else ("dynamic" if dynamic else None),
            "float_matmuls_ran": sum(n for op, n in ops.items() if op in FLOAT_MATMUL_OPS),
            "int8_ops": {op: n for op, n in sorted(ops.items()) if op in DYNAMIC_INT8_OPS | STATIC_INT8_OPS},
            "providers_ran": dict(providers)}
