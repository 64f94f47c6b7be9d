"""twinfer: a calibrated digital twin of distributed LLM inference, with a real executor.

calibrate (GPU microbenchmarks) -> profile.json -> cost model -> SimPy twin -> prediction;
executor (mpirun + torch.distributed + Triton) -> measured timings -> compare.
"""

__version__ = "0.1.0"
