"""diffood dashboard: `streamlit run app.py`. Navigation and the shared sidebar; pages live in app_pages/."""

import streamlit as st

from app_pages.common import sidebar

st.set_page_config(page_title="diffood: OOD detection by diffusion reconstruction", page_icon=":material/checkroom:", layout="wide")

PAGES = [
    st.Page("app_pages/home.py", title="Home", icon=":material/home:", default=True),
    st.Page("app_pages/reconstruct.py", title="Reconstruct", icon=":material/autorenew:", url_path="reconstruct"),
    st.Page("app_pages/histograms.py", title="Score histograms", icon=":material/bar_chart:", url_path="histograms"),
    st.Page("app_pages/roc.py", title="ROC / AUROC vs t", icon=":material/show_chart:", url_path="roc"),
    st.Page("app_pages/upload.py", title="Score your image", icon=":material/image_search:", url_path="upload"),
]

page = st.navigation(PAGES)
sidebar()
page.run()
