"""OpenVINO serving (this module is the one that imports openvino and nncf).

The exported ONNX graph is read by OpenVINO and compiled for the CPU plugin with fp32 inference
precision stated (on CPUs with AMX or AVX512-BF16 the plugin's default is bf16, which would make
"fp32" untrue); int8 is NNCF post-training quantisation (``nncf.quantize``, activation ranges
calibrated on training rows). Performance counters are on: the first request's profiling info
names every executed node with its kernel (``brgemm_avx512_amx_I8``...), which the knobs judge.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from greenknobs.phases import Availability

ENGINE = "openvino"
MATMUL_NODES = frozenset({"FullyConnected", "MatMul", "Convolution", "GroupConvolution"})


def available(device: str = "cpu") -> Availability:
    try:
        import nncf  # noqa: F401  (int8)
        import openvino  # noqa: F401
    except ImportError as exc:
        return Availability(False, f"openvino or nncf is not installed ({exc}); pip install openvino nncf")
    if device != "cpu":
        return Availability(False, "greenknobs serves OpenVINO on its CPU plugin only")
    return Availability(True)


# What every session compiles with. PERF_COUNT: the profiled first run is the int8 evidence (the
# nodes that executed, and in what precision). f32: the float parts run in fp32 as the PyTorch model
# does -- on AMX/AVX512-bf16 CPUs OpenVINO would otherwise choose bf16 for them. LATENCY: one
# stream, the request batches of a serving loop. benchmarks/serving_engines.py --openvino-config
# probes other settings.
COMPILE_CONFIG: dict[str, str] = {"PERF_COUNT": "YES", "INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16"}  # inference.precision -> the plugin's INFERENCE_PRECISION_HINT


class OpenVinoServer:
    """One compiled model and its infer request serving the exported graph."""

    engine = ENGINE

    def __init__(self, onnx_path: Path, quantization: str, calibration: list[dict[str, np.ndarray]] | None,
                 device: str, threads: int, workdir: Path, transformer: bool = True, precision: str = "fp32"):
        import openvino as ov

        start = time.perf_counter()
        core = ov.Core()
        model = core.read_model(str(onnx_path))
        if quantization == "static_int8":
            model = _nncf_quantize(model, calibration, transformer)
        elif quantization != "none":
            raise ValueError(f"OpenVINO serves none or static_int8, not {quantization}")
        if precision not in PRECISION_HINTS:
            raise ValueError(f"OpenVINO serves fp32 or bf16, not {precision}")
        config = {**COMPILE_CONFIG, "INFERENCE_NUM_THREADS": threads}
        if precision != "fp32":  # else COMPILE_CONFIG's own hint (f32 unless a probe changed it)
            config["INFERENCE_PRECISION_HINT"] = PRECISION_HINTS[precision]
        self.compiled = core.compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.input_names = [i.get_any_name() for i in self.compiled.inputs]
        self.runs = 0
        self.ran: dict[str, Any] | None = None
        self.facts = {"engine": ENGINE, "version": ov.__version__,
                      "providers": list(self.compiled.get_property("EXECUTION_DEVICES")),
                      "inference_precision": _type_name(self.compiled.get_property("INFERENCE_PRECISION_HINT")),
                      "threads": threads, "quantization": quantization, "precision": precision,
                      "build_s": round(time.perf_counter() - start, 3)}

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        out = self.request.infer({k: feeds[k] for k in self.input_names})
        self.runs += 1
        if self.ran is None:
            self.ran = _executed(self.request.profiling_info, self.facts["providers"])
        return np.array(out[self.compiled.output(0)])  # a copy: the request's buffer is reused by the next call


def _type_name(t: Any) -> str:
    """An OpenVINO element type as its name (``f32``), whatever the binding returns."""
    name = getattr(t, "get_type_name", None)
    return str(name()) if callable(name) else str(t)


def _nncf_quantize(model: Any, calibration: list[dict[str, np.ndarray]] | None, transformer: bool) -> Any:
    import nncf

    if not calibration:
        raise ValueError("static int8 needs calibration inputs (training rows)")
    logging.getLogger("nncf").setLevel(logging.ERROR)  # progress bars and notes, not problems
    return nncf.quantize(model, nncf.Dataset(calibration), subset_size=len(calibration),
                         model_type=nncf.ModelType.TRANSFORMER if transformer else None)


def _executed(profiling: list[Any], devices: list[str]) -> dict[str, Any]:
    """What the profiled request ran: int8 and float matrix kernels among the executed nodes."""
    ran = [p for p in profiling if str(p.status).endswith("EXECUTED")]
    mm = [p for p in ran if p.node_type in MATMUL_NODES]
    int8 = [p for p in mm if "i8" in p.exec_type.lower() or "u8" in p.exec_type.lower()]
    kernels = Counter(f"{p.node_type}:{p.exec_type}" for p in int8)
    return {"nodes_ran": len(ran), "int8_nodes_ran": len(int8), "int8_kind": "static" if int8 else None,
            "bf16_nodes_ran": sum("bf16" in p.exec_type.lower() for p in ran),
            "float_matmuls_ran": len(mm) - len(int8), "int8_ops": dict(sorted(kernels.items())),
            "providers_ran": {d: len(ran) for d in devices[:1]}}
