"""`python -m flowrl` is the `flowrl` command."""

import sys

from .cli import main

sys.exit(main())
