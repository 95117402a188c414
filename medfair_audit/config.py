"""Every stage's configuration in one place.

Each stage takes a frozen, keyword-only dataclass that validates itself on construction and
raises :class:`~medfair_audit.exceptions.ConfigError` naming the argument at fault. They live next
to the code they configure; this module gathers them for discovery.
"""

from .data.phantom import AnatomyModel, PhantomConfig
from .target import Target

__all__ = ["AnatomyModel", "PhantomConfig", "Target"]
