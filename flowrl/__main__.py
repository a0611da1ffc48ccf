"""`python -m flowrl ...` (and `accelerate launch -m flowrl train ...`): the flowrl CLI."""

from .cli import main

raise SystemExit(main())
