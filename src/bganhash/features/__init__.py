"""Image features: backbones (registry, EfficientNet-Lite), extraction (batched, cached) and transforms."""
