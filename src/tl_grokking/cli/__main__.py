"""``python -m tl_grokking.cli`` runs the ``tl-grokking`` command."""

import sys

from . import main

sys.exit(main())
