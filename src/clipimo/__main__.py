"""``python -m clipimo`` (and ``torchrun -m clipimo``) runs the command-line interface."""
import sys

from .cli.app import main

sys.exit(main())
