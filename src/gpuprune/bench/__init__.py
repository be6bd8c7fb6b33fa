"""Benchmarks: what skipping pruned blocks is worth, side by side with dense and sparse baselines.

``gemm`` times every VGG16 layer's GEMM on each backend, ``e2e`` times whole pruned VGG16 models,
``results`` stores one JSON record per measurement and turns them into tables and plots.
"""
