"""LM training (needs the ``duplex-lm[train]`` extra: lightning, torchmetrics).

Import the pieces from their modules: ``loss``, ``metrics``, ``module``, ``run``, ``config``.
"""
