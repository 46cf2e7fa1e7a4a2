"""mixprec: mixed-precision post-training quantization of PyTorch models.

The pipeline, one call per step::

    analysis = mixprec.analyze(model, data, candidates="w4a8,w8a8", metric="sqnr")  # groups, S, costs
    plan = analysis.solve(budget="bops=w4a8")                                      # -> Plan
    front = analysis.pareto("bops", n_plans=20, evaluate=fn)                       # -> Front (fn: model -> float)
    quantized = mixprec.apply(model, plan, data)                                   # the input model is untouched
    exported = mixprec.export(model, plan, data, target="ort-cpu", out="model.onnx")  # -> ExportResult
    mixprec.export_gguf(model, plan, "model.gguf")                                  # -> GGUFExport (llama.cpp)
    mixprec.write_compressed_tensors(model, plan, "out_dir")                        # -> CompressedTensorsExport (vLLM)
    deployed = mixprec.deploy_cuda(model, plan, data)                               # -> CudaDeployment (torch's GPU kernels)
    latency = mixprec.profile_latency(model, data, "w8a8,w4a8", target="ort-cpu")      # -> LatencyProfile

or all at once: ``mixprec.quantize(model, data, budget="bops=w4a8", evaluate=fn)``.
"""
__version__ = "0.1.0"

from . import _startup  # noqa: E402,F401  (the command line: a Ctrl-C while torch loads is one line, not a traceback)

from .threads import threads_from_environment  # noqa: E402
threads_from_environment()  # MIXPREC_THREADS, where set, in Python too

from .analysis import Analysis, analyze  # noqa: E402
from .apply import apply  # noqa: E402
from .candidates import Candidate, parse_candidate, parse_candidates  # noqa: E402
from .costs import cost_tables  # noqa: E402
from .errors import MixprecError  # noqa: E402
from . import export  # noqa: E402  (the package, which called is the export function: mixprec.export(model, plan, data))
from .export import ExportResult  # noqa: E402
from .export.compressed_tensors import CompressedTensorsExport, write_compressed_tensors  # noqa: E402
from .export.cuda import CudaDeployment, deploy_cuda, load_cuda, save_cuda  # noqa: E402
from .export.gguf import GGUFExport, export_gguf  # noqa: E402
from .export.latency import LatencyProfile, profile as profile_latency  # noqa: E402
from .front import Front, FrontPlan  # noqa: E402
from .groups import discover_groups  # noqa: E402
from .pipeline import QuantizeResult, quantize, quantize_plan  # noqa: E402
from .plan import Plan  # noqa: E402
from .rounding import BRECQ, GPTQ, AdaRound, Nearest, rounding_config  # noqa: E402
from .run_directory import RunDirectory  # noqa: E402
from .sensitivity import metric_config  # noqa: E402

__all__ = ["analyze", "Analysis", "apply", "quantize", "quantize_plan", "QuantizeResult", "Front", "FrontPlan",
           "Candidate", "parse_candidate", "parse_candidates", "cost_tables", "MixprecError", "discover_groups",
           "Plan", "RunDirectory", "export", "ExportResult", "export_gguf", "GGUFExport", "write_compressed_tensors",
           "CompressedTensorsExport", "deploy_cuda", "save_cuda", "load_cuda", "CudaDeployment", "profile_latency", "LatencyProfile", "metric_config", "Nearest", "GPTQ", "AdaRound", "BRECQ", "rounding_config",
           "__version__"]
