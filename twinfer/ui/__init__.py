"""The what-if dashboard (Streamlit): ``twinfer ui`` serves ``twinfer/ui/app.py``.

Pages: What-if (``whatif``), Search (``search_page``), Calibration
(``calibration_page``) and Sim vs real (``simreal``). Plots are plotly figures built
by pure functions; the twin's runs are cached by ``runs``. The dashboard reads
results and runs the twin, never the executor's GPU code.
"""
