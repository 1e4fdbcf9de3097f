"""Built-in defenses: one module each."""
