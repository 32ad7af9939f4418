"""report.png of ``mpu demo`` (issue 19.7): which direction is better, the retain model as the goal,
and a missing value shown as missing, never as a bar of height 0. Checked on the matplotlib objects."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import pytest
from matplotlib.patches import Rectangle

from mpu.experiments.demo import COLUMNS, plot
from mpu.experiments.report import demo_figure

SUMMARY = {
    "models": {
        "target": {"forget_quality": 1e-5, "model_utility": 0.9, "forget_Q_A_ROUGE": 0.95, "privleak": -80.0},
        "retain": {"forget_quality": 1.0, "model_utility": 0.88, "forget_Q_A_ROUGE": 0.4, "privleak": None},
        "noise-free": {"forget_quality": None, "model_utility": 0.85, "forget_Q_A_ROUGE": 0.45, "privleak": float("nan")},
        "MPU": {"forget_quality": 0.3, "model_utility": 0.86, "forget_Q_A_ROUGE": 0.5, "privleak": 5.0},
    },
    "verdict": "MPU model utility 0.86 vs 0.85 noise-free (above by 1.18%)",
}


@pytest.fixture
def panels():
    figure = demo_figure(SUMMARY, ["forget_quality", "model_utility", "forget_Q_A_ROUGE", "privleak"])
    yield figure, {axis.get_title().split("\n")[0]: axis for axis in figure.axes}
    plt.close(figure)


def _bars(axis) -> list[Rectangle]:
    return [patch for patch in axis.patches if isinstance(patch, Rectangle)]


def test_missing_values_get_no_bar_and_an_na_label(panels):
    _, axes = panels
    quality = axes["forget_quality"]
    assert len(_bars(quality)) == 3                         # noise-free's None is not drawn
    assert all(bar.get_height() > 0 for bar in _bars(quality))
    assert [text.get_text() for text in quality.texts] == ["n/a"]
    privleak = axes["privleak"]
    assert len(_bars(privleak)) == 2 and all(not math.isnan(bar.get_height()) for bar in _bars(privleak))
    assert [text.get_text() for text in privleak.texts] == ["n/a", "n/a"]   # retain None, noise-free NaN
    assert len(_bars(axes["model_utility"])) == 4 and not axes["model_utility"].texts


def test_every_panel_says_which_direction_is_better_and_that_retain_is_the_goal(panels):
    figure, axes = panels
    assert "higher is better" in axes["model_utility"].get_title()
    assert "lower" in axes["forget_Q_A_ROUGE"].get_title()
    assert "closer to 0" in axes["privleak"].get_title()
    assert "log" in axes["forget_quality"].get_title() and axes["forget_quality"].get_yscale() == "log"
    for axis in axes.values():
        assert "close to retain" in axis.get_title()
    assert "close to the retain model" in figure._suptitle.get_text()
    # the retain value is drawn as the goal line where it exists
    line = [line for line in axes["model_utility"].lines if line.get_linestyle() == "--"]
    assert len(line) == 1 and line[0].get_ydata()[0] == pytest.approx(0.88) and "goal" in line[0].get_label()
    assert not [line for line in axes["privleak"].lines if line.get_linestyle() == "--"]


def test_the_demo_writes_report_png_through_it(tmp_path):
    path = tmp_path / "report.png"
    plot({**SUMMARY, "models": {name: {column: values.get(column) for column in COLUMNS}
                                for name, values in SUMMARY["models"].items()}}, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
