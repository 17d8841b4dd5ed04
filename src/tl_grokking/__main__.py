"""``python -m tl_grokking`` runs the ``tl-grokking`` command."""

import sys

from tl_grokking.cli import main

if __name__ == "__main__":
    sys.exit(main())
