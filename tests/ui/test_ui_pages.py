"""Each dashboard page under Streamlit's ``AppTest``: widgets change, values update,
bad input is one inline error and the app keeps running."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest
from ui_data import fa_pool_paper_doc, sampled_profile_doc

import twinfer.ui
from twinfer.spec import SpecError
from twinfer.ui import runs
from twinfer.ui.editor import dump

TIMEOUT_S = 60


def whatif_page():
    from twinfer.ui import whatif

    whatif.render()


def search_page():
    from twinfer.ui import search_page

    search_page.render()


def calibration_page():
    from twinfer.ui import calibration_page

    calibration_page.render()


def simreal_page():
    from twinfer.ui import simreal

    simreal.render()


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def no_failures(at: AppTest) -> None:
    assert not at.exception, [e.message for e in at.exception]


# ---- What-if ---------------------------------------------------------------------------
def test_whatif_default_then_a_tp_change_updates_the_metrics_fast():
    at = AppTest.from_function(whatif_page, default_timeout=TIMEOUT_S).run()
    no_failures(at)
    before = metrics(at)
    assert before["GPUs"] == "2" and before["TPOT (mean)"].endswith("ms")
    at.number_input(key="wi_preset_tp").set_value(1)
    start = time.perf_counter()
    at.run()
    elapsed = time.perf_counter() - start
    no_failures(at)
    after = metrics(at)
    assert after["GPUs"] == "1"
    assert after["TPOT (mean)"] != before["TPOT (mean)"]
    assert "tp: 1" in at.session_state["scenario_yaml"]
    assert at.text_area(key="wi_yaml").value == at.session_state["scenario_yaml"]
    assert elapsed < 1.0, f"a what-if change took {elapsed:.2f} s"
    assert any(m.delta for m in at.metric)  # the change is shown against the last run


def test_whatif_bad_yaml_is_an_inline_error_and_the_app_recovers():
    at = AppTest.from_function(whatif_page, default_timeout=TIMEOUT_S).run()
    at.text_area(key="wi_yaml").set_value("model: [unclosed").run()
    no_failures(at)
    assert at.error[0].value.startswith("scenario YAML: malformed YAML at line 1")
    assert not at.metric
    bad_tp = ("model: llama-3-8b\ncluster: {nodes: [{gpu: h200-sxm, count: 2}]}\n"
              "layout: {kind: uniform, tp: 3}\n")
    at.text_area(key="wi_yaml").set_value(bad_tp).run()
    no_failures(at)
    assert at.error[0].value.startswith("layout.tp: tp=3 does not divide")
    at.text_area(key="wi_yaml").set_value(bad_tp.replace("tp: 3", "tp: 2")).run()
    no_failures(at)
    assert not at.error and metrics(at)["GPUs"] == "2"
    assert at.number_input(key="wi_preset_tp").value == 2  # widgets follow the YAML


def test_whatif_a_layout_that_does_not_fit_is_an_error_not_a_crash():
    at = AppTest.from_function(whatif_page, default_timeout=TIMEOUT_S).run()
    at.selectbox(key="wi_preset_model").set_value("llama-3-70b").run()
    at.number_input(key="wi_preset_tp").set_value(1).run()
    no_failures(at)
    assert at.error and "GiB usable" in at.error[0].value


def test_whatif_fa_pool_scenario_shows_the_crossover_against_its_baseline():
    at = AppTest.from_function(whatif_page, default_timeout=TIMEOUT_S).run()
    at.selectbox(key="wi_source").set_value("fa_pool_paper").run()
    no_failures(at)
    assert at.number_input(key="wi_preset_fa_pool").value == 32
    assert at.number_input(key="wi_preset_fa_threshold").value == 4096
    # links given in the YAML, so that it runs whatever the shipped profiles measured
    at.text_area(key="wi_yaml").set_value(dump(fa_pool_paper_doc())).run()
    no_failures(at)
    assert not at.error and metrics(at)["GPUs"] == "40"
    captions = " ".join(c.value for c in at.caption)
    assert "overtakes the baseline from **" in captions
    assert len(at.get("plotly_chart")) == 4  # length sweep, memory, utilization, timeline


def test_whatif_workload_widgets_change_the_workload():
    at = AppTest.from_function(whatif_page, default_timeout=TIMEOUT_S).run()
    tps_before = metrics(at)["TPS"]
    at.selectbox(key="wi_preset_arrival").set_value("batch").run()
    no_failures(at)
    assert "kind: batch" in at.session_state["scenario_yaml"]
    assert not [n for n in at.number_input if n.key == "wi_preset_rate"]
    assert metrics(at)["TPS"] != tps_before


# ---- Search ----------------------------------------------------------------------------
def test_search_runs_fills_whatif_and_gives_the_mpirun_command():
    at = AppTest.from_function(search_page, default_timeout=TIMEOUT_S).run()
    no_failures(at)
    at.button(key="se_run").click().run()
    no_failures(at)
    table = at.dataframe[0].value
    assert len(table) >= 3 and table["chosen"].sum() == 1
    refined = table[table["engine"] == "simpy"]
    assert list(refined.index) == list(range(len(refined)))  # refined first
    assert list(refined["TPOT (ms)"]) == sorted(refined["TPOT (ms)"])  # objective: tpot
    assert table["chosen"][0]
    assert len(at.get("plotly_chart")) == 1
    last = len(table) - 1
    at.selectbox(key="se_pick").set_value(int(table["#"][last]))
    at.button(key="se_use").click().run()
    no_failures(at)
    command = at.code[0].value
    assert "mpirun" in command and "llama3_8b_h200_tp2.yaml" in command
    label, notice_command = at.session_state["search_notice"]
    assert notice_command == command and label == table["layout"][last]
    # the What-if page now runs that layout and shows the command
    at2 = AppTest.from_function(whatif_page, default_timeout=TIMEOUT_S)
    at2.session_state["scenario_yaml"] = at.session_state["scenario_yaml"]
    at2.session_state["search_notice"] = at.session_state["search_notice"]
    at2.run()
    no_failures(at2)
    assert at2.code[0].value == command
    assert label in at2.info[0].value


def test_search_bad_gpus_is_an_inline_error():
    at = AppTest.from_function(search_page, default_timeout=TIMEOUT_S).run()
    at.sidebar.text_input(key="se_gpus").set_value("h100-sxm:4,oops").run()
    at.button(key="se_run").click().run()
    no_failures(at)
    assert at.error[0].value.startswith("--gpus: cannot read 'oops'")


def test_search_on_other_gpus_by_tps():
    at = AppTest.from_function(search_page, default_timeout=TIMEOUT_S).run()
    at.sidebar.text_input(key="se_gpus").set_value("h100-sxm:4")
    at.sidebar.radio(key="se_objective").set_value("tps")
    at.sidebar.multiselect(key="se_kinds").set_value(["uniform"])
    at.button(key="se_run").click().run()
    no_failures(at)
    table = at.dataframe[0].value
    assert set(table["kind"]) == {"uniform"} and table["GPUs"].max() <= 4
    refined = table[table["engine"] == "simpy"]
    assert list(refined["TPS"]) == sorted(refined["TPS"], reverse=True)


# ---- Calibration -----------------------------------------------------------------------
def test_calibration_shows_samples_and_fits_of_every_op(profiles_dir):
    at = AppTest.from_function(calibration_page, default_timeout=TIMEOUT_S).run()
    no_failures(at)
    assert "toy-sampled (shipped)" in at.sidebar.selectbox(key="ca_profile").options
    at.sidebar.selectbox(key="ca_profile").set_value("toy-sampled (shipped)").run()
    no_failures(at)
    assert len(at.get("plotly_chart")) == 5  # GEMM, decode, prefill, element-wise, links
    assert not at.info
    shapes = at.multiselect(key="ca_gemm_shapes")
    assert shapes.value == ["n=4096 k=4096", "n=14336 k=4096"]
    shapes.set_value(["n=4096 k=4096"]).run()
    no_failures(at)
    table = at.table[0].value
    assert dict(zip(table["field"], table["value"], strict=True))["source"] == "measured"


def test_calibration_shows_sustained_throughput_and_graph_replayed_collectives():
    """The shipped H200 profile: its sustained-GEMM trace on the overview, and the
    all-reduce replayed from a CUDA graph next to the eager samples."""
    from twinfer.sim.profile import load_profile
    from twinfer.ui import profile_curves as pc

    at = AppTest.from_function(calibration_page, default_timeout=TIMEOUT_S).run()
    at.sidebar.selectbox(key="ca_profile").set_value("h200-sxm (shipped)").run()
    no_failures(at)
    assert len(at.get("plotly_chart")) == 6  # + the sustained trace
    table = at.table[0].value
    rows = dict(zip(table["field"], table["value"], strict=True))
    profile = load_profile("h200-sxm")
    assert rows["sustained matmul"] == f"{profile.peaks.sustained_matmul_fraction:.3f} of the peak"
    fig = pc.collective_figure(profile, "nvlink")
    replayed = {t.name: t for t in fig.data if "CUDA graph" in (t.name or "")}
    fit = profile.collectives["nvlink"]["all_reduce"]["2"]
    nccl = replayed["all_reduce x2: replayed from a CUDA graph"]
    oneshot = replayed["all_reduce x2: one-shot symm-mem, CUDA graph"]
    assert len(nccl.x) == len(fit.graph_samples)
    assert len(oneshot.x) == len(fit.oneshot_graph_samples) > 0
    assert pc.sustained_figure(load_profile("a100-sxm-80g")) is None  # none measured


def test_calibration_datasheet_profile_says_so():
    at = AppTest.from_function(calibration_page, default_timeout=TIMEOUT_S).run()
    at.sidebar.selectbox(key="ca_profile").set_value("a100-sxm-80g (shipped)").run()
    no_failures(at)
    assert "Datasheet-derived" in at.warning[0].value
    assert any("roofline" in i.value for i in at.info)


def test_an_uploaded_profile_is_validated():
    good = runs.profile_from_bytes(json.dumps(sampled_profile_doc("mine")).encode(), "a.json")
    assert good.name == "mine"
    with pytest.raises(SpecError, match="profile b.json: is not valid JSON at line 1"):
        runs.profile_from_bytes(b"{nope", "b.json")
    with pytest.raises(SpecError, match="no schema_version"):
        runs.profile_from_bytes(b'{"name": "x"}', "c.json")


# ---- Sim vs real -----------------------------------------------------------------------
def test_simreal_without_shipped_results_says_so(tmp_path, monkeypatch):
    from twinfer.ui import validation

    monkeypatch.setattr(validation, "REPO", tmp_path)
    at = AppTest.from_function(simreal_page, default_timeout=TIMEOUT_S).run()
    no_failures(at)
    assert "No shipped validation results exist yet" in at.info[0].value


def test_simreal_compares_the_shipped_results(validation_repo):
    at = AppTest.from_function(simreal_page, default_timeout=TIMEOUT_S).run()
    no_failures(at)
    shipped = at.sidebar.multiselect(key="sr_shipped")
    assert shipped.value == [str(Path("docs/validation"))]  # not docs/overheads
    assert "tpot_mean" in set(at.dataframe[0].value["metric"])
    assert len(at.get("plotly_chart")) == 2
    at.selectbox(key="sr_metric").set_value("ttft_mean_s").run()
    no_failures(at)
    assert at.dataframe[1].value["profile"][0].startswith("cpu")
    # a profile without the run's link kind (shm) cannot simulate it: one inline error
    at.sidebar.selectbox(key="sr_profile").set_value("h100-sxm").run()
    no_failures(at)
    assert at.error and at.error[0].value.startswith("cpu_tp2_b1_c64_results.json")
    at.sidebar.multiselect(key="sr_shipped").set_value([]).run()
    no_failures(at)
    assert not at.dataframe  # nothing selected, nothing compared


def test_simreal_bad_results_file_is_one_line():
    with pytest.raises(SpecError, match="x.json: is not an executor results JSON"):
        runs.compare_bytes(b'{"schema": "other"}', "x.json", "", ())
    with pytest.raises(SpecError, match="y.json: is not valid JSON"):
        runs.compare_bytes(b"[", "y.json", "", ())


# ---- the app ---------------------------------------------------------------------------
def test_app_opens_on_the_whatif_page():
    at = AppTest.from_file(str(Path(twinfer.ui.__file__).parent / "app.py"),
                              default_timeout=TIMEOUT_S).run()
    no_failures(at)
    assert at.title[0].value == "What-if"
    assert metrics(at)["GPUs"] == "2"


def test_the_trace_download_is_a_chrome_trace():
    from twinfer.ui.editor import shipped_yaml

    trace = json.loads(runs.trace_json(shipped_yaml("llama3_8b_h200_pp2")))
    steps = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert steps and {e["pid"] for e in steps} == {0, 1}


def test_gpu_validation_sets_are_selected_by_default(tmp_path):
    from ui_data import RESULTS

    from twinfer.ui import validation

    doc = json.loads(RESULTS.read_text())
    for folder, kind in (("cpu", "cpu"), ("h100", "cuda")):
        (tmp_path / "docs" / folder).mkdir(parents=True)
        doc["device"]["type"] = kind
        (tmp_path / "docs" / folder / "run.json").write_text(json.dumps(doc))
    found = validation.shipped_results(tmp_path)
    groups = {str(p.parent.relative_to(tmp_path)): [p] for p in found}
    assert validation.default_groups(groups) == [str(Path("docs/h100"))]
    assert validation.default_groups({"docs/cpu": groups["docs/cpu"]}) == ["docs/cpu"]


def test_every_shipped_scenario_renders_or_says_why_not():
    from twinfer.spec.scenario import shipped_scenarios

    at = AppTest.from_function(whatif_page, default_timeout=TIMEOUT_S).run()
    for name in shipped_scenarios():
        at.selectbox(key="wi_source").set_value(name).run()
        no_failures(at)
        if at.error:  # e.g. a profile that lacks a link the cluster uses
            assert len(at.error) == 1 and "\n" not in at.error[0].value, name
        else:
            assert metrics(at)["GPUs"].isdigit(), name


def test_simreal_shows_what_makes_a_comparison_unfair(validation_repo, monkeypatch):
    """A run whose executor switches differ from those the profile's overheads were
    fitted to gets the compare note as a warning on the page."""
    from ui_data import RESULTS

    import twinfer.compare

    doc = json.loads(RESULTS.read_text())
    doc["switches"] = {"env": {}, "pdl": "off", "pdl_trigger": "end", "pdl_max_batch": 8}
    target = validation_repo / "docs" / "validation" / RESULTS.name
    target.write_text(json.dumps(doc))  # other bytes than the other tests' runs: no cache
    monkeypatch.setattr(twinfer.compare, "executor_notes",
                        lambda doc, profile: ("executor switches differ: pdl 'off' (run)",))
    at = AppTest.from_function(simreal_page, default_timeout=TIMEOUT_S).run()
    no_failures(at)
    assert any("1 run(s): executor switches differ: pdl 'off' (run)." in w.value
               for w in at.warning)
