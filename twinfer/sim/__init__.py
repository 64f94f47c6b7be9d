"""The digital twin: profile-driven cost model, SimPy engine, closed-form fast path.

Imports no torch, triton, MPI or streamlit.
"""
