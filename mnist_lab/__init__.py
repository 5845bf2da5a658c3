"""mnist_lab: the helper package behind the INT305 MNIST workbook.

The flow, one module each: data (MNIST as tensors) → augment → models (the report's
four) → experiments (their recipes) → train (fit) → runs (results on disk).
"""

__version__ = "0.1.0"
