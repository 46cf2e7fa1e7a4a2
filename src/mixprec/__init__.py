"""mixprec: mixed-precision post-training quantization of PyTorch models."""
__version__ = "0.1.0"

from .apply import apply  # noqa: E402
from .candidates import Candidate, parse_candidate, parse_candidates  # noqa: E402
from .costs import cost_tables  # noqa: E402
from .errors import MixprecError  # noqa: E402
from .groups import discover_groups  # noqa: E402
from .plan import Plan  # noqa: E402
from .sensitivity import KL, SQNR, Fisher, Hessian, Local, Roundoff, Task, metric_config  # noqa: E402

__all__ = ["apply", "Candidate", "parse_candidate", "parse_candidates", "cost_tables", "MixprecError",
           "discover_groups", "Plan", "metric_config", "Roundoff", "SQNR", "KL", "Task", "Local", "Hessian", "Fisher",
           "__version__"]
