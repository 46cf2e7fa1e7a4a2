"""mixprec: mixed-precision post-training quantization of PyTorch models."""
__version__ = "0.1.0"

from .apply import apply  # noqa: E402
from .candidates import Candidate, parse_candidate, parse_candidates  # noqa: E402
from .costs import cost_tables  # noqa: E402
from .errors import MixprecError  # noqa: E402
from .groups import discover_groups  # noqa: E402
from .plan import Plan  # noqa: E402
from .rounding import AdaRound, BRECQ, GPTQ, Nearest, rounding_config  # noqa: E402

__all__ = ["apply", "Candidate", "parse_candidate", "parse_candidates", "cost_tables", "MixprecError",
           "discover_groups", "Plan", "Nearest", "GPTQ", "AdaRound", "BRECQ", "rounding_config", "__version__"]
