import sys

from lora_jax.report.cli import main

sys.exit(main())
