"""Presets, one file per model: `PRESETS[name]` maps Config fields to values.

In the wheel this folder ships as `mnist_tf2.configs`; `mnist_tf2.config`
finds it either there or at the top of a checkout.
"""
