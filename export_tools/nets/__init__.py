"""PyTorch network definitions (generators, encoders, heads, captioners) handed to the exporter."""
