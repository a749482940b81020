"""Codec training (the ``duplex-codec[train]`` extra: lightning, torchmetrics).

Import the pieces from their modules (``duplex.codec.training.module`` etc.); this package file
stays empty of imports so that loading a registered teacher never pulls in lightning.
"""
