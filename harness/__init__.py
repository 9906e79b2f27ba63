"""clmerge engine: spec → task stream → LoRA ViT + method → trainer → results store → report.

Nothing heavy is imported here so that `clmerge --help` stays fast; import the submodules you need.
"""

__version__ = "0.1.0"
