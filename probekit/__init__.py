"""probekit: the evolution of out-of-distribution robustness throughout fine-tuning.

Stage 1 (`probekit.extract`) caches frozen-backbone features in HDF5; stage 2
(`probekit.heads`) trains linear heads on them and logs ID accuracy, OOD accuracy
and effective robustness (`probekit.robustness`) at every iteration.
"""

__version__ = "0.1.0"
