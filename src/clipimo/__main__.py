"""``python -m clipimo`` (and ``torchrun -m clipimo``) runs the command-line interface."""
import sys

from .cli import main

sys.exit(main())
