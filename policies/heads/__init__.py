"""Policy heads. ``HEADS`` maps a ``policy=`` config name to its class."""

from policies.heads.base import PolicyHead, UnsupportedByHead, require_capabilities
from policies.heads.deterministic import DeterministicHead
from policies.heads.gaussian import GaussianHead

HEADS: dict[str, type[PolicyHead]] = {
    "gaussian": GaussianHead,
    "deterministic": DeterministicHead,
}

__all__ = ["HEADS", "DeterministicHead", "GaussianHead", "PolicyHead", "UnsupportedByHead", "require_capabilities"]
