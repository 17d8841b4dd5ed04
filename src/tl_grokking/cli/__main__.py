"""``python -m tl_grokking.cli`` runs the ``tl-grokking`` command."""

import sys

from tl_grokking.cli import main

sys.exit(main())
