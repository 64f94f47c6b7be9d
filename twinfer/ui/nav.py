"""The app's pages, so one page can send the user to another (``st.switch_page``)."""

from __future__ import annotations

import streamlit as st

_PAGES: dict[str, object] = {}


def register(pages: dict[str, object]) -> None:
    _PAGES.clear()
    _PAGES.update(pages)


def go(name: str) -> None:
    """Switch to page ``name`` when the app's navigation is running (a page rendered
    alone, as in a test, stays where it is)."""
    page = _PAGES.get(name)
    if page is not None:
        st.switch_page(page)
