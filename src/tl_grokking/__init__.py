"""tl_grokking: reverse-engineering grokking in small transformers with TransformerLens.

The public API is re-exported here; each module's ``__all__`` lists what it contributes.
"""

from ._version import __version__
from .fourier import *  # noqa: F403
from .fourier import __all__ as _fourier_all
from .model import *  # noqa: F403
from .model import __all__ as _model_all
from .runs import *  # noqa: F403
from .runs import __all__ as _runs_all
from .tasks import *  # noqa: F403
from .tasks import __all__ as _tasks_all

# -- modules added by later work register here (one pair of lines each) --
from .plots import *  # noqa: F403
from .plots import __all__ as _plots_all
from .report import *  # noqa: F403
from .report import __all__ as _report_all
from .weights import *  # noqa: F403
from .weights import __all__ as _weights_all
from .hooks import *  # noqa: F403
from .hooks import __all__ as _hooks_all
from .logits import *  # noqa: F403
from .logits import __all__ as _logits_all
from .ablations import *  # noqa: F403
from .ablations import __all__ as _ablations_all
from .discrete_log import *  # noqa: F403
from .discrete_log import __all__ as _discrete_log_all
from .clock_pizza import *  # noqa: F403
from .clock_pizza import __all__ as _clock_pizza_all
from .checkpoints import *  # noqa: F403
from .checkpoints import __all__ as _checkpoints_all
from .progress import *  # noqa: F403
from .progress import __all__ as _progress_all
from .phases import *  # noqa: F403
from .phases import __all__ as _phases_all
from .fastforward import *  # noqa: F403
from .fastforward import __all__ as _fastforward_all
from .training import *  # noqa: F403
from .training import __all__ as _training_all

__all__ = [
    "__version__",
    *_weights_all,
    *_hooks_all,
    *_logits_all,
    *_ablations_all,
    *_fourier_all,
    *_model_all,
    *_runs_all,
    *_tasks_all,
    *_discrete_log_all, *_clock_pizza_all,
    *_checkpoints_all,
    *_progress_all,
    *_phases_all,
    *_fastforward_all,
    *_training_all,
    *_plots_all,
    *_report_all,
]
