"""bilevel.app.run.plots: default panels (grad_norm, inner stationarity, no timings), readable legends and styles, and the
step-0 line of the runner that the curves start from."""
import json
import types

import pytest
import torch

from bilevel.app.run import plots
from bilevel.app.run.runner import TaskRunner, compare_runs, run_task
from bilevel.app.tasks.base import TaskRun

PNG = b"\x89PNG\r\n\x1a\n"


def _records(scale=1.0):
    recs = [{"step": 0, "upper": 2.0 * scale, "time": 0.01, "eval_time": 0.01, "eval_upper": 2.0 * scale,
             "acc": 0.1}]
    for t in (2, 4, 6):
        recs.append({"step": t, "upper": scale / t, "lower": 0.5 / t, "grad_norm": 1.0 / t, "time": 0.1 * t,
                     "eval_time": 0.02 * t, "eval_upper": scale / (t + 1), "acc": 1 - 1 / t,
                     "info": {"lower_grad_norm_first": 2.0, "lower_grad_norm_last": 0.2 * t, "k_bar": t,
                              "inner_diverged": False}})
    return recs


def test_default_panels_show_grad_norm_and_stationarity_not_timings():
    recs = _records()
    assert plots.default_panels([recs]) == ["upper", "grad_norm", plots.STATIONARITY, "acc"]
    assert "eval_time" not in plots.task_metrics(recs)
    # several runs: task metrics that every run logged
    other = [dict(r, f1=0.5) for r in _records()]
    assert plots.default_panels([recs, other]) == ["upper", "grad_norm", plots.STATIONARITY, "acc"]
    assert plots.default_panels([other]) == ["upper", "grad_norm", plots.STATIONARITY, "acc", "f1"]
    # without info (an older run) there is no stationarity panel
    bare = [{k: v for k, v in r.items() if k != "info"} for r in recs]
    assert plots.default_panels([bare]) == ["upper", "grad_norm", "acc"]


def test_values_of_info_entries_and_the_stationarity_ratio():
    rec = _records()[2]  # step 4
    assert plots.value(rec, plots.STATIONARITY) == pytest.approx(0.8 / 2.0)
    assert plots.value(rec, "info.k_bar") == 4.0
    assert plots.value(rec, "info.inner_diverged") is None  # booleans are not plotted
    assert plots.value(_records()[0], plots.STATIONARITY) is None  # step 0: no inner loop ran
    assert plots.value({"step": 1, "upper": None}, "upper") is None
    avail = plots.available_metrics(_records())
    assert {"grad_norm", "eval_time", plots.STATIONARITY, "acc", "info.k_bar",
            "info.lower_grad_norm_last"} <= set(avail)
    assert "info.inner_diverged" not in avail


def test_line_styles_differ_and_markers_are_staggered():
    styles = [plots.line_style(i, 200, 6) for i in range(6)]
    assert len({(s["color"], s["linestyle"], s["marker"]) for s in styles}) == 6
    assert len({s["marker"] for s in styles}) == 6 and all(s["markerfacecolor"] == "none" for s in styles)
    every = styles[0]["markevery"][1]
    assert 2 <= every <= 20 and len({s["markevery"][0] for s in styles}) > 1  # not all at the same steps
    assert "markevery" not in plots.line_style(0, 10)


def test_figure_legend_sits_outside_every_panel():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(8, 6), layout="constrained")
    for ax in axes.ravel():
        for i in range(5):
            ax.plot(range(30), [i * x for x in range(30)], label=f"a fairly long run label {i}",
                    **plots.line_style(i, 30, 5))
    leg = plots.figure_legend(fig, list(axes.ravel()))
    assert leg is not None and leg.get_frame_on() and len(leg.get_texts()) == 5  # each label once
    assert leg.get_texts()[0].get_fontsize() >= 9
    fig.canvas.draw()
    box = leg.get_window_extent()
    for ax in axes.ravel():
        assert not box.overlaps(ax.get_window_extent()), "the legend covers a panel"
    plt.close(fig)


def test_plot_curves_and_compare_write_pngs(tmp_path):
    p = plots.plot_curves(_records(), tmp_path / "c.png", title="run")
    assert p.read_bytes()[:8] == PNG
    p = plots.plot_compare([("a", _records()), ("b", _records(2.0))], tmp_path / "cmp.png")
    assert p.read_bytes()[:8] == PNG
    p = plots.plot_compare([("a", _records())], tmp_path / "cmp2.png", ["info.k_bar", plots.STATIONARITY])
    assert p.read_bytes()[:8] == PNG


def test_run_curves_panels_titles_and_labels_do_not_overlap():
    """curves.png has fixed margins (no constrained layout): with 9 panels of awkward values (log scale, 1e-7
    offsets, six-digit numbers, a long title), no panel's texts reach into another's, and all stay in the figure."""
    recs = []
    for t in range(0, 41):
        recs.append({"step": t, "upper": 1e3 / (t + 1) ** 2, "lower": 0.5, "grad_norm": 1e-7 * (1 + 0.01 * t),
                     "time": 0.1 * t, "eval_time": 0.0, "acc": 123456.0 + 7 * t, "a_much_longer_metric_name": -t,
                     "f1": 0.5, "holdout_loss": 2.3 + 1e-5 * t, "recall": 1 - 1 / (t + 2), "precision": t % 3,
                     **({"info": {"lower_grad_norm_first": 2.0, "lower_grad_norm_last": 10.0 ** (1 - t / 10)}}
                        if t else {})})
    assert len(plots.default_panels([recs])) == 9
    name = "hyperclean: a long method name (K=100, T=40)"
    plt, fig = plots.curves_figure(recs, title=name)
    try:
        renderer = fig.canvas.get_renderer()
        fig.canvas.draw()
        axes = [ax for ax in fig.axes if ax.get_visible()]
        assert len(axes) == 9 and axes[0].get_yscale() == "log" and axes[2].get_yscale() == "log"
        figbox = fig.bbox
        boxes = [ax.get_tightbbox(renderer) for ax in axes]
        for i, box in enumerate(boxes):
            assert figbox.x0 <= box.x0 and box.x1 <= figbox.x1 and figbox.y0 <= box.y0 and box.y1 <= figbox.y1, i
            for j in range(i):
                assert not box.overlaps(boxes[j]), f"panels {j} and {i} overlap"
        (title,) = [t.get_window_extent(renderer) for t in fig.findobj(lambda a: getattr(a, "get_text", None)
                                                                         and a.get_text() == name)]
        assert title.y1 <= figbox.y1 and not any(title.overlaps(b) for b in boxes)
    finally:
        plt.close(fig)


# ------------------------------------------------------------------------------------------ the step-0 line
def _rng_task(evaluate_draws: bool):
    """A task module whose evaluate() at x0 draws from torch's, numpy's and Python's generators."""
    import random

    import numpy as np

    def build(config):
        n = 3
        target = torch.arange(1.0, n + 1, dtype=torch.float64)
        noise = torch.Generator().manual_seed(0)

        def objectives(t):
            shift = 0.01 * torch.randn(n, dtype=torch.float64)  # the run's own use of the global generator
            return (lambda x, y: 0.5 * ((y - target - shift) ** 2).sum() + 0.01 * (x ** 2).sum(),
                    lambda x, y: 0.5 * ((y - x) ** 2).sum())

        def evaluate(loop):
            if evaluate_draws and loop.t == 0:  # at x0 only: the later evaluations do move the run
                torch.rand(5), np.random.rand(3), random.random()
            return {"upper": float(((loop.x - target) ** 2).sum()), "acc": float(torch.rand((), generator=noise))}

        return TaskRun(x0=torch.zeros(n, dtype=torch.float64), y0=torch.zeros(n, dtype=torch.float64),
                       objectives=objectives, evaluate=evaluate, summarize=lambda loop: {"x0": float(loop.x[0])})

    return types.SimpleNamespace(
        __name__="rng_task", OPTIONS={}, build=build,
        COMMON_DEFAULTS={"method": "rhg", "inner_steps": 5, "inner_lr": 0.5, "outer_steps": 4, "outer_lr": 0.1,
                         "outer_optimizer": "adam", "log_every": 2, "method_options": {}})


def test_fresh_runs_log_step_0_without_changing_the_trajectory(tmp_path):
    runs = {}
    for draws in (False, True):
        r = TaskRunner("rng", {"dtype": "float64"}, tmp_path / str(draws), quiet=True, module=_rng_task(draws),
                       checkpoint_every=0)
        runs[draws] = (r.execute(), [json.loads(s) for s in (tmp_path / str(draws) / "metrics.jsonl").read_text()
                                     .splitlines()])
    (s0, lines0), (s1, lines1) = runs[False], runs[True]
    assert [ln["step"] for ln in lines0] == [0, 2, 4]
    first = lines0[0]
    assert first["upper"] == first["eval_upper"] == pytest.approx(1 + 4 + 9) and "acc" in first
    assert "grad_norm" not in first and "info" not in first
    assert s0["x0"] == s1["x0"]  # the step-0 evaluation's random draws do not move the run
    assert [ln["upper"] for ln in lines0] == [ln["upper"] for ln in lines1]


def test_resume_from_a_checkpoint_does_not_repeat_step_0(tmp_path):
    conf = {"dtype": "float64", "outer_steps": 6, "log_every": 1}
    a = TaskRunner("rng", conf, tmp_path / "a", quiet=True, module=_rng_task(False), checkpoint_every=2)
    a.setup()
    for _ in range(3):
        a.step()
    state = a.state_dict()
    assert state["metrics_lines"] == 4  # steps 0, 1, 2, 3
    a.close()
    b = TaskRunner("rng", conf, tmp_path / "a", quiet=True, module=_rng_task(False), checkpoint_every=2)
    b.setup(resume=True)
    b.load_state_dict(state)
    b.execute()
    steps = [json.loads(s)["step"] for s in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2, 3, 4, 5, 6]


def test_a_run_and_compare_plot_from_step_0(tmp_path):
    for m in ("rhg", "bda"):
        run_task("toy", {"method": m, "outer_steps": 6, "log_every": 2, "threads": 1}, tmp_path / m, quiet=True,
                 checkpoint_every=0)
        recs = plots.read_metrics(tmp_path / m / "metrics.jsonl")
        assert recs[0]["step"] == 0 and recs[0]["x"] == 0.0 and recs[0]["distance_to_solution"] == 1.0
        assert (tmp_path / m / "curves.png").read_bytes()[:8] == PNG
    _, png = compare_runs([tmp_path / "rhg", tmp_path / "bda"], out=tmp_path / "cmp.png")
    assert png.read_bytes()[:8] == PNG
    # any info entry can be asked for
    _, png = compare_runs([tmp_path / "rhg", tmp_path / "bda"], out=tmp_path / "k.png",
                          metrics=["info.lower_grad_norm_last", plots.STATIONARITY])
    assert png.read_bytes()[:8] == PNG


# ------------------------------------------------------------------------------------------ bilevel figures
@pytest.mark.slow
def test_figures_quick_have_titles_and_legends_outside_the_panels(tmp_path, monkeypatch):
    """`bilevel figures --quick`: every multi-panel figure has a suptitle and keeps its legend out of the panels."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    from bilevel.app import cli

    saved = {}
    original = Figure.savefig

    def spy(fig, path, *args, **kwargs):
        axes = [ax for ax in fig.axes if ax.get_visible()]
        saved[str(path).rsplit("/", 1)[-1]] = {
            "panels": len(axes), "title": fig._suptitle.get_text() if fig._suptitle else "",
            "axes_legends": sum(ax.get_legend() is not None for ax in axes), "figure_legends": len(fig.legends)}
        return original(fig, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", spy)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert cli.main(["figures", "--quick", "--out", str(tmp_path)]) == 0
    assert set(saved) == {"fig1_initializations.png", "fig2_inner_steps.png", "fig3_alpha.png", "iaptt_fig1_toy.png",
                          "iaptt_fig2_kbar.png", "iaptt_fig3_llc.png", "bvfim_synthetic.png"}
    for name, f in saved.items():
        assert f["panels"] > 1 and f["title"], name
        assert f["axes_legends"] == 0 and f["figure_legends"] == 1, name
        assert (next(tmp_path.rglob(name))).read_bytes()[:8] == PNG
