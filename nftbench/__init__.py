"""nftbench: a benchmark harness for fine-tuning resistance."""

from nftbench.threads import apply_wait_policy

__version__ = "0.1.0"

# before anything imports torch (nftbench/threads.py says why); the manifest records it
WAIT_POLICY = apply_wait_policy()
