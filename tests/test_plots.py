import hashlib

import matplotlib.pyplot as plt
import numpy as np
import pytest

from mlupdates import plots, runtime


@pytest.fixture
def book(tmp_path, monkeypatch):
    (tmp_path / "_quarto.yml").write_text("project: {type: book}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLUPDATES_FIGURE_DIR", raising=False)
    monkeypatch.delenv("MLUPDATES_FIGURE_CHECK", raising=False)
    runtime.setup(notebook="01-demo")
    return tmp_path


def draw(slope: float = 1.0, color: str | None = None):
    fig, ax = plt.subplots()
    x = np.linspace(0, 1, 50)
    ax.plot(x, slope * x, color=color)
    ax.set_title("demo")
    return fig


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_show_writes_byte_stable_png_under_figures(book):
    plots.show(draw(), "fig-demo")
    first = plots.figure_path("fig-demo")
    assert first == book / "figures" / "01-demo" / "fig-demo.png"
    before = digest(first)
    plots.show(draw(), "fig-demo")
    assert digest(first) == before  # no timestamps or version stamps in the file
    assert b"Matplotlib" not in first.read_bytes()


def test_show_rejects_labels_quarto_would_not_accept(book):
    with pytest.raises(ValueError, match="fig-lower-case-words"):
        plots.show(draw(), "Figure 1")


def test_check_mode_accepts_identical_and_names_file_on_change(book, tmp_path, monkeypatch):
    plots.show(draw(), "fig-demo")
    reference = plots.figure_path("fig-demo")
    monkeypatch.setenv("MLUPDATES_FIGURE_CHECK", str(book / "figures"))
    monkeypatch.setenv("MLUPDATES_FIGURE_DIR", str(tmp_path / "scratch"))
    plots.show(draw(), "fig-demo")  # same drawing: passes
    with pytest.raises(
        plots.FigureMismatchError, match=r"fig-demo\.png: regenerated figure differs"
    ):
        plots.show(draw(slope=0.5, color="red"), "fig-demo")
    assert reference.is_file()


def test_check_mode_reports_missing_reference(book, tmp_path, monkeypatch):
    monkeypatch.setenv("MLUPDATES_FIGURE_CHECK", str(book / "figures"))
    monkeypatch.setenv("MLUPDATES_FIGURE_DIR", str(tmp_path / "scratch"))
    with pytest.raises(plots.FigureMismatchError, match="no committed figure"):
        plots.show(draw(), "fig-never-committed")


def test_measured_figures_checked_for_size_and_blankness_not_pixels(book, tmp_path):
    plots.show(draw(), "fig-timing")
    reference = plots.figure_path("fig-timing")
    new = plots.save(draw(slope=3.0), tmp_path / "new.png")
    plots.check_against(new, reference, measured=True)  # different curve: fine
    blank = plt.figure()
    plots.save(blank, tmp_path / "blank.png")
    with pytest.raises(plots.FigureMismatchError, match="blank"):
        plots.check_against(tmp_path / "blank.png", reference, measured=True)
    wide = plt.figure(figsize=(9, 3))
    wide.add_subplot().plot([0, 1])
    plots.save(wide, tmp_path / "wide.png")
    with pytest.raises(plots.FigureMismatchError, match="changed size"):
        plots.check_against(tmp_path / "wide.png", reference, measured=True)


def test_size_change_is_a_mismatch_not_a_crash(book, tmp_path):
    plots.show(draw(), "fig-demo")
    reference = plots.figure_path("fig-demo")
    wide = plt.figure(figsize=(9, 3))
    wide.add_subplot().plot([0, 1])
    plots.save(wide, tmp_path / "wide.png")
    with pytest.raises(plots.FigureMismatchError, match="cannot be compared"):
        plots.check_against(tmp_path / "wide.png", reference)
