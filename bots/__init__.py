"""The application around the pipeline: its core (bots/core), the adapters and the service.

Importing it registers the settings sections the adapters own ([telegram], [discord], [cli]) with
pipeline/config.py, before any process of the application loads its settings: the pipeline knows no
platform, and a bad key in those sections still fails at start, naming it.
"""

from bots import cli as _cli  # noqa: F401  registers [cli]
from bots.discord import settings as _discord  # noqa: F401  registers [discord]
from bots.telegram import settings as _telegram  # noqa: F401  registers [telegram]
