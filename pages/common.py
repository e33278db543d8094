"""What every page shares: the sidebar settings, the cached model and tables, and image helpers."""

from __future__ import annotations

import hashlib
import os
import runpy
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import streamlit as st
import torch

from diffood.access import check_server_path, server_paths_note
from diffood.diffusion import DEFAULT_SAMPLER, DEFAULT_STEPS, SAMPLERS, STEPPED, default_device, resolve_precision
from diffood.errors import DiffoodError
from diffood.evaluate import (
    DEFAULT_MULTI_TS,
    DEFAULT_TS,
    CacheWarning,
    EvalConfig,
    EvalResult,
    as_json,
    default_cache_dir,
    evaluate,
    from_json,
    pending_calls,
    ready,
    table_status,
)
from diffood.features import checkpoint_bank
from diffood.fitted import has_fit
from diffood.jobs import ABANDONED, FAILED, RUNNING, WAITING, server_jobs
from diffood.inputs import IMAGE_SUFFIXES, MAX_ENTRIES, expand, store_images
from diffood.model import DEFAULT_CHECKPOINT, Checkpoint, find_checkpoints, load_checkpoint
from diffood.perceptual import get_lpips, lpips_status
from diffood.scores import COMBINED, FEATURES, MULTI_T, RECONSTRUCTION, Features, Pick, method_names, parse
from diffood.scores.base import Fitted
from diffood.verdict import TARGET_TPR

APP = Path(__file__).parents[1] / "app.py"
UPLOAD_TYPES = sorted(s.lstrip(".") for s in IMAGE_SUFFIXES) + ["zip"]
_app = threading.local()  # Streamlit runs each session's script in a thread of its own


@contextmanager
def app_running():
    """Marks the page that app.py runs through st.navigation."""
    _app.active = True
    try:
        yield
    finally:
        _app.active = False


def through_app() -> None:
    """Every page calls this first. With a `pages/` folder beside app.py, Streamlit answers a deep link
    with the page file alone until app.py has run once in the server; then run app.py instead, which
    registers st.navigation and shows this same page with the sidebar."""
    if not getattr(_app, "active", False):
        runpy.run_path(str(APP), run_name="__main__")
        st.stop()


# the pages, by file name: title, icon, URL path
PAGES = {
    "home": ("Home", ":material/home:", None),
    "reconstruct": ("Reconstruct", ":material/autorenew:", "reconstruct"),
    "histograms": ("Score histograms", ":material/bar_chart:", "histograms"),
    "roc": ("ROC / AUROC vs t", ":material/show_chart:", "roc"),
    "features": ("Feature space", ":material/scatter_plot:", "features"),
    "upload": ("Score your image", ":material/image_search:", "upload"),
}


def page(name: str) -> st.Page:
    title, icon, url_path = PAGES[name]
    return st.Page(f"pages/{name}.py", title=title, icon=icon, url_path=url_path, default=url_path is None)


DEFAULTS = {
    "checkpoint": str(Path(os.environ.get("DIFFOOD_CHECKPOINT", DEFAULT_CHECKPOINT)).expanduser()),
    "ood": None,  # the checkpoint's default OOD set
    "extra_models": [],
    "extra_ood": [],
    "sampler": DEFAULT_SAMPLER,
    "steps": DEFAULT_STEPS,
    "seed": 0,
    "score_text": "",  # the checkpoint's pick
    "methods": [],  # more scores reported beside it
    "eval_ts": list(DEFAULT_TS),
    "eval_n": 1000,
    "multi_ts": list(DEFAULT_MULTI_TS),
    "tpr": 100 * TARGET_TPR,  # in %, as the sidebar shows it
}


def _init_state() -> None:
    for key, value in DEFAULTS.items():
        st.session_state.setdefault(key, value)
        # re-assigning keeps widget values alive across pages that do not render the widget
        st.session_state[key] = st.session_state[key]


def sidebar() -> None:
    """The settings every page reads, kept in st.session_state so they persist across pages."""
    _init_state()
    with st.sidebar:
        st.header("Settings")
        models = {**find_checkpoints(), **{p: p for p in st.session_state["extra_models"]}}
        models.setdefault(st.session_state["checkpoint"], st.session_state["checkpoint"])
        st.selectbox("Model", list(models), key="checkpoint", format_func=models.get,
                     help="The shipped models, the checkpoints under $DIFFOOD_MODELS_DIR (default ./models), "
                          "and any folder added below")
        readable = server_paths_note(server_address())
        st.text_input("Add a checkpoint folder", key="model_folder", on_change=_add_choice,
                      args=("model_folder", "extra_models", "checkpoint"), placeholder="path/to/checkpoint",
                      help=f"A diffusers-layout folder with diffood.json, e.g. from `diffood export`. Server folders "
                           f"readable here: {readable}")
        sets = ood_sets()
        if st.session_state["ood"] not in sets:
            st.session_state["ood"] = next(iter(sets))
        uploaded = st.session_state.get("uploaded_ood", {})  # named by their label, not their cache folder
        st.selectbox("OOD set", list(sets), key="ood",
                     format_func=lambda k: sets[k] if k in uploaded else f"{k}: {sets[k]}")
        st.text_input("Add an OOD folder or .zip", key="ood_folder", on_change=_add_choice,
                      args=("ood_folder", "extra_ood", "ood"), placeholder="path/to/images",
                      help=f"A folder or .zip on the server. Server folders readable here: {readable}")
        st.file_uploader("Or upload an OOD set (.zip or images)", type=UPLOAD_TYPES, accept_multiple_files=True,
                         key="ood_upload", on_change=_add_upload,
                         help=f"At most {MAX_ENTRIES:,} images per archive; used by every page like a folder")
        if st.session_state.get("path_error"):
            st.error(st.session_state["path_error"], icon=":material/block:")
        st.selectbox("Sampler", list(SAMPLERS), key="sampler", help="\n\n".join(f"**{k}**: {v}" for k, v in SAMPLERS.items()))
        st.number_input("Steps", 1, 100, key="steps", disabled=st.session_state["sampler"] not in STEPPED,
                        help=f"Network calls per reconstruction for {' and '.join(STEPPED)}")
        st.number_input("Seed", 0, 2**31 - 1, key="seed")
        st.number_input("Target ID acceptance (TPR, %)", 50.0, 99.9, step=0.5, format="%.1f", key="tpr",
                        help="Verdicts call an image OOD when its score is above the threshold that accepts this share "
                             "of ID validation images; every page and CSV states both")
        st.text_input("Score", key="score_text", placeholder="the model's pick",
                      help="The default score, by name or with parameters: `reconstruction(draws=2)`, "
                           "`features(k=5)`, `both`; empty: the model's recorded pick")
        st.multiselect("Also report", score_choices(), key="methods",
                       help="More scores beside the default on every table page, each with its network calls")
        st.divider()
        st.caption(f"Device: **{device_name()}**")
        status = lpips_status()
        st.caption((":material/check_circle: " if status.available else ":material/warning: ") + str(status))


def score_choices() -> list[str]:
    """What the sidebar offers beside the default: the named scores and every registered kind."""
    return list(dict.fromkeys([RECONSTRUCTION, FEATURES, COMBINED, MULTI_T, *method_names()]))


def with_every_method(cfg: EvalConfig) -> EvalConfig:
    """cfg reporting every method this checkpoint can score (scores.method_names); one lacking its feature bank
    or its fit is left out, and the page says which and the command that makes it."""
    ckpt = checkpoint()
    pick, bank = Pick.of(ckpt), checkpoint_bank(ckpt)
    usable, left = [], []
    for spec in (parse(m, pick) for m in method_names()):
        needs_bank = bank is None and any(isinstance(t, Features) for t in spec.terms())
        (left if needs_bank or (isinstance(spec, Fitted) and not has_fit(ckpt, spec)) else usable).append(spec)
    if left:
        st.info(f"Left out: {', '.join(s.name for s in left)}, which need{'s' * (len(left) == 1)} a feature bank or a "
                f"fit on ID training images this checkpoint lacks: `diffood bank` and `diffood fit-score --checkpoint "
                f"{ckpt.path} --score all` make them.", icon=":material/info:")
    return replace(cfg, methods=tuple(usable))


def tpr() -> float:
    """The sidebar's target ID acceptance as a fraction: the verdict threshold accepts this share of ID validation."""
    return float(st.session_state["tpr"]) / 100


def server_address() -> str:
    """The address this server listens on (Streamlit's server.address; "" is every interface)."""
    return st.get_option("server.address") or ""


def _add_choice(field: str, extras: str, target: str) -> None:
    """A path typed into `field` becomes an option of the `target` select box, chosen, when this server lets
    its visitors read it (access.py); otherwise the sidebar says why, in one line."""
    value = st.session_state[field].strip()
    st.session_state[field] = ""
    st.session_state["path_error"] = ""
    if not value:
        return
    try:
        check_server_path(value, server_address())
    except DiffoodError as e:
        st.session_state["path_error"] = str(e)
        return
    st.session_state[extras] = [*st.session_state[extras], value]
    st.session_state[target] = value


def _add_upload() -> None:
    """Uploaded images or archives become an OOD set: a folder of their own in the cache, chosen."""
    files = st.session_state.get("ood_upload") or []
    st.session_state["path_error"] = ""
    if not files:
        return
    entries = [e for f in files for e in expand(f.name, f.getvalue())]
    try:
        folder, n, skipped = store_images(entries, default_cache_dir() / "uploaded-sets")
    except DiffoodError as e:
        st.session_state["path_error"] = str(e)
        return
    name = ", ".join(f.name for f in files)
    st.session_state["uploaded_ood"] = {**st.session_state.get("uploaded_ood", {}), str(folder):
                                        f"uploaded {name} ({n} images{f'; {len(skipped)} skipped' if skipped else ''})"}
    st.session_state["ood"] = str(folder)


def ood_sets() -> dict[str, str]:
    """The OOD sets the chosen model offers, its default first, then the folders added in the sidebar."""
    try:
        data = load_model(checkpoint_path()).data
    except DiffoodError:  # the page says why when it loads the model
        return {"uniform": "uniform pixel noise"}
    sets = data.ood_sets()
    first = {data.default_ood: sets.get(data.default_ood, data.default_ood)}
    return {**first, **sets, **{p: "a folder of images" for p in st.session_state["extra_ood"]},
            **st.session_state.get("uploaded_ood", {})}


def dataset_label(data, name: str) -> str:
    """How a page names a set: the ID set by its label, OOD sets by name."""
    return f"{data.label} (ID)" if name == data.name else st.session_state.get("uploaded_ood", {}).get(name, name)


def without_paths(text: str) -> str:
    """`text` with each uploaded set's folder on the server replaced by the set's label."""
    for path, label in st.session_state.get("uploaded_ood", {}).items():
        text = text.replace(path, label)
    return text


def device_name() -> str:
    d = default_device()
    name = f"CUDA ({torch.cuda.get_device_name()})" if d.type == "cuda" else d.type.upper()
    return f"{name}, {resolve_precision('auto', d)}"


@st.cache_resource(show_spinner="Loading the model…")
def load_model(path: str) -> Checkpoint:
    return load_checkpoint(path, device=default_device())


def checkpoint_path() -> str:
    return str(Path(st.session_state["checkpoint"]).expanduser())


def checkpoint() -> Checkpoint:
    """The chosen checkpoint, or a clear message on the page and a stop."""
    try:
        return load_model(checkpoint_path())
    except DiffoodError as e:
        st.error(f"Could not load the checkpoint: {e}")
        st.stop()


def eval_config(reference_only: bool = False) -> EvalConfig:
    """The sidebar's settings as an EvalConfig; `reference_only`: just the ID validation statistics
    (with the default n, which they do not depend on, so the shipped table serves them)."""
    s = st.session_state
    return EvalConfig(checkpoint=checkpoint_path(), ood=() if reference_only else (s["ood"],),
                      ts=tuple(sorted(s["eval_ts"])), multi_ts=tuple(sorted(set(s["multi_ts"]) & set(s["eval_ts"]))) or None,
                      score=s["score_text"].strip() or None, methods=tuple(s["methods"]),
                      sampler=s["sampler"], steps=int(s["steps"]),
                      n=DEFAULTS["eval_n"] if reference_only else int(s["eval_n"]), seed=int(s["seed"]),
                      tpr=tpr(), device=str(default_device()))


@st.cache_data(show_spinner=False, max_entries=32)
def _read_evaluation(config_json: str, sha: str, version: str, default_only: bool = False) -> EvalResult:
    cfg = from_json(config_json)
    return evaluate(cfg, load_model(cfg.checkpoint), default_only=default_only)


FIRST_ANSWER_CALLS = 20_000  # the default score computed without a click: about 1000 images x 4 calls, or fewer


@contextmanager
def cache_warnings_shown():
    """An unreadable cached table (moved aside, computed afresh) said on the page, not only in the log."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CacheWarning)
        try:
            yield
        finally:
            for w in caught:
                st.warning(without_paths(str(w.message)), icon=":material/warning:")


def evaluation(cfg: EvalConfig, button: str = "Compute now", default_only: bool = False) -> EvalResult | None:
    """The evaluation for cfg if it needs no computing (shipped or cached); else a button that computes it with a
    progress bar. `default_only`: the default score alone (evaluate's cheap first answer), computed at once, with
    no click, where it costs at most FIRST_ANSWER_CALLS network calls. Returns None while it is not there."""
    ckpt = checkpoint()
    with cache_warnings_shown():
        try:
            missing, version = table_status(cfg, ckpt, default_only)  # an unreadable cached table is moved aside here
            at_once = default_only and missing and pending_calls(cfg, ckpt, default_only=True) <= FIRST_ANSWER_CALLS
        except DiffoodError as e:  # a score typed in the sidebar that does not parse, a bank it lacks
            st.error(str(e))
            return None
    if missing:
        banks = (f"; the feature term at t_f = {', '.join(map(str, cfg.feature_ts))}, each with a bank of the "
                 f"training images") if cfg.feature_ts and not default_only else ""
        what = "the default score" if default_only else f"t = {', '.join(map(str, cfg.ts))}"
        if not at_once:
            st.info(without_paths(f"These settings have not been evaluated yet: {missing:,} images to run through the "
                                  f"model ({', '.join(cfg.ood) or 'ID reference only'}; {what}; n = {cfg.n}{banks})."))
            if not st.button(button, type="primary"):
                return None
        bar = st.progress(0.0, text="Scoring…")
        try:
            evaluate(cfg, ckpt, lambda done, total, what: bar.progress(
                done / total, text=without_paths(f"Scoring {what}: {done:,}/{total:,}")), default_only=default_only)
        except DiffoodError as e:
            st.error(without_paths(str(e)))
            return None
        if not at_once:
            st.rerun()  # redraw without the button, now reading the cache
        bar.empty()
        missing, version = table_status(cfg, ckpt, default_only)
    try:
        result = _read_evaluation(as_json(cfg), ckpt.key, version, default_only)
    except DiffoodError as e:
        st.error(str(e))
        return None
    for note in result.notes:
        st.info(note, icon=":material/info:")
    return result


def to_display(x: torch.Tensor, scale: int = 4) -> np.ndarray:
    """A [0, 1] image (C, H, W) -> uint8 (H*scale, W*scale), or (.., 3) for RGB, upscaled without blur."""
    a = (x.clamp(0, 1).cpu().float().numpy() * 255).round().astype(np.uint8)
    a = a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)
    return a.repeat(scale, 0).repeat(scale, 1)


def heat(err: torch.Tensor, scale: int = 4) -> np.ndarray:
    """|error| (C, H, W) in [0, 1], averaged over colour channels -> an RGB 'hot' map (black, red, yellow,
    white), upscaled."""
    e = err.mean(0).clamp(0, 1).cpu().numpy()
    rgb = np.stack([np.clip(3 * e, 0, 1), np.clip(3 * e - 1, 0, 1), np.clip(3 * e - 2, 0, 1)], -1)
    return (rgb * 255).round().astype(np.uint8).repeat(scale, 0).repeat(scale, 1)


def gray_to_rgb(a: np.ndarray) -> np.ndarray:
    return np.repeat(a[..., None], 3, -1)


def strip(panels: list[np.ndarray], gap: int = 4) -> np.ndarray:
    """Panels (RGB, same height) side by side with a gap, as one image."""
    h = panels[0].shape[0]
    sep = np.full((h, gap, 3), 40, np.uint8)
    out = []
    for p in panels:
        out += [p if p.ndim == 3 else gray_to_rgb(p), sep]
    return np.concatenate(out[:-1], axis=1)


def lpips_net():
    return get_lpips(str(default_device()))


def evaluation_controls() -> None:
    """Which t and how many images the tables use; changes that need computing offer a button."""
    with st.expander("Evaluate more t values or more images"):
        st.multiselect("t values", sorted({*range(25, 1000, 25), *DEFAULT_TS}), key="eval_ts")
        st.multiselect("t combined into multi-t (none chosen: all)", sorted({*range(25, 1000, 25), *DEFAULT_TS}),
                       key="multi_ts", help="Below t = 500 the error mostly tracks how much ink an image has")
        st.select_slider("Images per set", [100, 250, 500, 1000, 2000], key="eval_n",
                         help="ID test and OOD images; 500 ID validation images set the z-score statistics")
        if not st.session_state["eval_ts"]:
            st.warning("Choose at least one t.")
            st.stop()


WATCH_S = 2.0  # how often a page looks at its background job
REDRAW_S = 20.0  # and redraws with what has landed, at most this often (a redraw re-summarises and re-renders
# every chart: CPU the job needs)


def evaluated_tables() -> tuple[EvalConfig, EvalResult, bool]:
    """The evaluation controls, then the table for the sidebar's settings as far as it is computed (see
    `in_background`); stops the page until there is something to draw. The third value: the rest is still
    being computed."""
    evaluation_controls()
    cfg = eval_config()
    result, pending = progressive(cfg)
    if result is None:
        st.stop()
    return cfg, result, pending


def in_background(cfg: EvalConfig, button: str | None = None) -> EvalResult | None:
    """cfg's result as far as it is computed (see `progressive`)."""
    return progressive(cfg, button)[0]


def progressive(cfg: EvalConfig, button: str | None = None) -> tuple[EvalResult | None, bool]:
    """(cfg's result as far as it is computed, whether some of it is still missing). Shipped or cached: all of
    it. Else the default score first (computed here at once where it is cheap), the rest handed to the server's
    background jobs (at once, or when `button` is pressed) and what of it has landed returned, with a line that
    redraws the page as more lands; moving a slider or leaving the page neither stops nor restarts it. A result
    of None: nothing to draw yet."""
    ckpt = checkpoint()
    with cache_warnings_shown():
        try:
            missing, version = table_status(cfg, ckpt)
            first = table_status(cfg, ckpt, default_only=True)[0]
        except DiffoodError as e:
            st.error(without_paths(str(e)))
            return None, False
    if not missing:
        return evaluation(cfg), False
    if first and evaluation(cfg, default_only=True) is None:
        return None, True  # the default score is not there yet: its button or its error is on the page
    jobs, key = server_jobs(), job_key(cfg, ckpt)
    job, start = jobs.get(key), False
    if job is None or job.state == ABANDONED:
        start = button is None or st.button(button, type="primary", key=f"start-{key}")
        if not start:
            st.info(without_paths(f"Not computed yet: {missing:,} images to run through the model. It runs in the "
                                  f"background, and what is done is drawn as it lands."))
            return None, True
    elif not job.active:  # it failed, was stopped, or ended before its tables changed again: the user decides
        if job.state == FAILED:
            st.error(without_paths(f"The background computation failed: {job.error}"))
        start = st.button(button or "Compute the rest", key=f"restart-{key}")
    if start:
        try:
            job = jobs.submit(key, f"{ckpt.data.label} vs {', '.join(dataset_label(ckpt.data, o) for o in cfg.ood)}",
                              lambda progress: evaluate(cfg, ckpt, progress))
        except DiffoodError as e:  # the queue is full
            st.warning(str(e), icon=":material/hourglass:")
    part = ready(cfg, ckpt)
    if job is not None and job.active:
        job.touch()
        watch(key, as_json(cfg), version, part)
    if part is None:
        return None, True
    done, default_only = part
    result = _read_evaluation(as_json(done), ckpt.key, table_status(done, ckpt, default_only)[1], default_only)
    for note in result.notes:
        st.info(note, icon=":material/info:")
    return result, True


def job_key(cfg: EvalConfig, ckpt: Checkpoint) -> str:
    """One background job per checkpoint and settings (also the widgets' keys: no paths in them)."""
    where = cfg.cache_dir or default_cache_dir()  # the tables it fills
    return hashlib.sha256(f"{ckpt.key}:{where}:{as_json(cfg)}".encode()).hexdigest()[:20]


def watch(key: str, config_json: str, version: str, drawn: tuple[EvalConfig, bool] | None) -> None:
    """The background job's progress, looked at every WATCH_S seconds; the page is redrawn when the job ends, or
    when REDRAW_S have passed since it was drawn and its tables hold more than `drawn` (the part of the config
    `ready` gave it): a write in the middle of a t redraws nothing."""
    drawn_at = time.monotonic()

    @st.fragment(run_every=WATCH_S)
    def progress():
        nonlocal version
        job = server_jobs().get(key)
        if job is None or not job.active:
            st.rerun()
        if time.monotonic() - drawn_at > REDRAW_S:
            cfg, ckpt = from_json(config_json), checkpoint()
            if (written := table_status(cfg, ckpt)[1]) != version:  # one status, cheaper than `ready`
                if ready(cfg, ckpt) != drawn:
                    st.rerun()
                version = written
        job.touch()
        queue = server_jobs().listing()
        if job.state == WAITING:
            ahead = queue.index(job) if job in queue else 0
            st.caption(f"Waiting for the server's background work: {ahead} job{'s' * (ahead != 1)} ahead "
                       f"(it runs {server_jobs().workers} at a time).")
        else:
            now = f"{job.what}: {job.done:,}/{job.total:,}" if job.total else "starting"
            st.progress(job.fraction, text=without_paths(f"Computing the rest in the background ({now}). What is "
                                                         f"done is drawn as it lands; the page stays usable."))
        if st.button("Stop", key=f"stop-{key}", help="Stop the background computation; what is done is kept"):
            job.cancel()

    progress()


def still_computing(cfg: EvalConfig, result: EvalResult) -> str:
    """What of cfg its result lacks, for a chart's title: "t = 800, 900: computing, 40 %", or ""."""
    lacking = [t for t in cfg.ts if t not in result.config.ts]
    job = server_jobs().get(job_key(cfg, checkpoint()))
    if not lacking or job is None or not job.active:
        return ""
    return f"t = {', '.join(map(str, lacking))}: " + (f"computing, {job.fraction * 100:.0f} %" if job.state == RUNNING
                                                       else "waiting")


if __name__ == "__main__":  # this helper module, opened as a page of its own
    through_app()
