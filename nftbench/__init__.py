"""nftbench: a benchmark harness for fine-tuning resistance."""

__version__ = "0.1.0"
