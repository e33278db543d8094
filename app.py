"""diffood dashboard: `streamlit run app.py`. Navigation and the shared sidebar; pages live in pages/."""

import streamlit as st

from pages.common import PAGES, app_running, page, sidebar

st.set_page_config(page_title="diffood: OOD detection by diffusion reconstruction", page_icon=":material/checkroom:",
                   layout="wide")
current = st.navigation([page(name) for name in PAGES])
sidebar()
with app_running():
    current.run()
