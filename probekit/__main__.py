"""`python -m probekit` is the `probekit` command (also under torchrun)."""

from probekit.cli import main

raise SystemExit(main())
