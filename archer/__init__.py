"""archer: RL post-training of LLMs that shows which tokens matter.

Importing the package is cheap on purpose: torch, transformers, verl and ray are imported
lazily by the commands and modules that need them.
"""

__version__ = "0.1.0"
