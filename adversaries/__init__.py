"""Built-in adversaries: one module per family."""
