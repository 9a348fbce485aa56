"""Built-in example models (used by the demo, the training benchmarks and the tests)."""
from .tiny_vit import TinyViT, TinyViTConfig, digits_vit, demo_vit

__all__ = ["TinyViT", "TinyViTConfig", "digits_vit", "demo_vit"]
