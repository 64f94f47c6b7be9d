import streamlit as st


def render() -> None:
    st.title("search_page")
