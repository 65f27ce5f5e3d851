"""Drop-in replacements for the style-augmentation pieces of the public PODA and FAMix code.

``styleda_fast.compat.poda`` and ``styleda_fast.compat.famix`` keep the public names, constructor arguments and
data structures, and compute the same numbers with the fused kernels. See docs/MIGRATION.md.
"""
