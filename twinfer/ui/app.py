"""The dashboard's entry point: ``streamlit run twinfer/ui/app.py`` (or ``twinfer ui``).

Four pages behind ``st.navigation``; each page is a ``render()`` function of its own
module, so tests can run one page alone (``AppTest.from_function``).
"""

from __future__ import annotations

import streamlit as st


def main() -> None:
    # imported here, not at the top: a search's worker processes re-import this file
    from twinfer.ui import calibration_page, nav, search_page, simreal, whatif

    st.set_page_config(page_title="twinfer", page_icon=":material/hub:", layout="wide")
    pages = {
        "whatif": st.Page(whatif.render, title="What-if", icon=":material/tune:",
                          url_path="whatif", default=True),
        "search": st.Page(search_page.render, title="Search", icon=":material/travel_explore:",
                          url_path="search"),
        "calibration": st.Page(calibration_page.render, title="Calibration",
                               icon=":material/straighten:", url_path="calibration"),
        "simreal": st.Page(simreal.render, title="Sim vs real", icon=":material/compare:",
                           url_path="sim-vs-real"),
    }
    nav.register(pages)
    with st.sidebar:
        st.markdown("**twinfer** · a calibrated digital twin of distributed LLM inference")
    st.navigation(list(pages.values())).run()


if __name__ == "__main__":  # Streamlit runs the script as __main__; a search's workers
    main()  # re-import it as __mp_main__ and must not draw the app
