"""Allow ``python -m p3scan``."""

import sys

from p3scan.cli import main

sys.exit(main())
