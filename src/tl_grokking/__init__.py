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

__all__ = ["__version__", *_fourier_all, *_model_all, *_runs_all, *_tasks_all]
