"""tl_grokking: reverse-engineering grokking in small transformers with TransformerLens.

The public API is re-exported here; each module's ``__all__`` lists what it contributes.
The figure modules (:mod:`~tl_grokking.plots`, :mod:`~tl_grokking.report`) import plotly and are
loaded on first use of one of their names.
"""

import importlib as _importlib

from ._version import __version__
from .ablations import *  # noqa: F403
from .ablations import __all__ as _ablations_all
from .checkpoints import *  # noqa: F403
from .checkpoints import __all__ as _checkpoints_all
from .circuits import *  # noqa: F403
from .circuits import __all__ as _circuits_all
from .clock_pizza import *  # noqa: F403
from .clock_pizza import __all__ as _clock_pizza_all
from .discrete_log import *  # noqa: F403
from .discrete_log import __all__ as _discrete_log_all
from .fastforward import *  # noqa: F403
from .fastforward import __all__ as _fastforward_all
from .fourier import *  # noqa: F403
from .fourier import __all__ as _fourier_all
from .hooks import *  # noqa: F403
from .hooks import __all__ as _hooks_all
from .logits import *  # noqa: F403
from .logits import __all__ as _logits_all
from .model import *  # noqa: F403
from .model import __all__ as _model_all
from .phases import *  # noqa: F403
from .phases import __all__ as _phases_all
from .progress import *  # noqa: F403
from .progress import __all__ as _progress_all
from .runs import *  # noqa: F403
from .runs import __all__ as _runs_all
from .tasks import *  # noqa: F403
from .tasks import __all__ as _tasks_all
from .training import *  # noqa: F403
from .training import __all__ as _training_all
from .weights import *  # noqa: F403
from .weights import __all__ as _weights_all

_LAZY_MODULES = ("plots", "report")
_LAZY_NAMES = {
    "plots": (
        "loss_curves",
        "progress_measures_panel",
        "embedding_fourier_norms",
        "unembed_fourier_heatmap",
        "neuron_cluster_sizes",
        "fve_histogram",
        "neuron_activation_grids",
        "attention_to_operands",
        "attention_examples",
        "attention_heads_view",
        "trig_identity_coefficients",
        "ablation_table_figure",
        "phase_spans",
        "PHASE_COLORS",
    ),
    "report": (
        "build_report",
        "write_report",
        "run_status",
        "RunStatus",
        "REPORT_FILE",
        "check_run_dir",
        "external_urls",
    ),
}
_LAZY = {name: module for module, names in _LAZY_NAMES.items() for name in names}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tl_grokking' has no attribute {name!r}")
    value = getattr(_importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "__version__",
    *_ablations_all,
    *_checkpoints_all,
    *_circuits_all,
    *_clock_pizza_all,
    *_discrete_log_all,
    *_fastforward_all,
    *_fourier_all,
    *_hooks_all,
    *_logits_all,
    *_model_all,
    *_phases_all,
    *_progress_all,
    *_runs_all,
    *_tasks_all,
    *_training_all,
    *_weights_all,
    *_LAZY,
]
