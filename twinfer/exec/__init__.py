"""The executor: the scenario's layout run for real under MPI, timed step by step.

``twinfer exec SCENARIO`` (or ``mpirun -np N twinfer exec SCENARIO``) builds, on every
rank, its process groups from the placement (`groups`), its shard of a Llama-style
decoder (`model` + `tp`, weights from `weights`), a paged KV cache (`kv_cache`), and
serves the scenario's requests with iteration-level continuous batching (`scheduler`,
`engine`, `runner`), timing every step (`timing`); rank 0 writes the results JSON
(`results`, schema in docs/RESULTS.md). `launch` starts mpiexec or a rank; `bench` is
the GPU benchmark against the roofline and Hugging Face ``transformers``.

Nothing here imports `twinfer.sim`; kernels are reached only through `attention`.
"""
