"""Data ablations on cached features: grids of training subsets × seeds × lrs in one batched run
(`probekit.ablate.run.ablate`), and C-scores estimated from features (`probekit.ablate.cscore`)."""
