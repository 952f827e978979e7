"""`python -m mv2_jax.studies COMMAND …`: see mv2_jax/studies/cli.py."""

import sys

from mv2_jax.studies.cli import main

sys.exit(main())
