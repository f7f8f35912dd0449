"""`python -m training ...` is `magtkd-train ...`."""

from training.cli import main

raise SystemExit(main())
