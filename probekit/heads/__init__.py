"""Stage 2: linear heads on cached features (batched SGD heads, the L-BFGS L2 sweep)."""
