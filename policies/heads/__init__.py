"""Policy heads. ``HEADS`` maps a ``policy=`` config name to its class."""

from policies.heads.base import PolicyHead, UnsupportedByHead, require_capabilities
from policies.heads.deterministic import DeterministicHead
from policies.heads.diffusion import DiffusionHead
from policies.heads.flow import FlowHead
from policies.heads.gaussian import GaussianHead
from policies.heads.generative import ChunkExecutor, GenerativeHead
from policies.heads.latent import LatentDecoderHead
from policies.heads.mixture import MixtureHead

HEADS: dict[str, type[PolicyHead]] = {
    "gaussian": GaussianHead,
    "deterministic": DeterministicHead,
    "mixture": MixtureHead,
    "diffusion": DiffusionHead,
    "flow": FlowHead,
    "latent": LatentDecoderHead,
}

__all__ = ["HEADS", "ChunkExecutor", "DeterministicHead", "DiffusionHead", "FlowHead", "GaussianHead", "GenerativeHead",
           "LatentDecoderHead", "MixtureHead", "PolicyHead", "UnsupportedByHead", "require_capabilities"]
