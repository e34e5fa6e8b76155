"""Encoders that turn texts into vectors for selection: MiniLM, hidden states, keys/values."""

from icldistill.encoders.representations import *  # noqa: F403
from icldistill.encoders.representations import __all__ as __all__
