"""The report in a real browser: headless Chromium (Debian's ``chromium``; ``.ci/run``
installs it) renders the page offline, its screenshot is not blank and shows the charts,
and the DOM it builds has every section heading.

Not skipped when Chromium is missing: a report nobody can open is a failure.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
from matplotlib.image import imread

from worker.report.build import SECTIONS
from worker.report.charts import RAW_COLOR, RECAL_COLOR

WINDOW = (1280, 4000)
TIMEOUT_S = 120


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    raise AssertionError("headless Chromium is needed (Debian: apt-get install chromium)")


def _run(args: list[str], profile: Path) -> subprocess.CompletedProcess[bytes]:
    # A profile directory of its own: several Chromiums (other tests, other users of the
    # machine) must not share the default profile's lock. --no-sandbox: CI runs as root.
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           "--no-first-run", "--disable-dev-shm-usage", f"--user-data-dir={profile}", *args]
    proc = subprocess.run(cmd, capture_output=True, timeout=TIMEOUT_S, check=False)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
    return proc


def _rgb(hex_color: str) -> np.ndarray:
    return np.array([int(hex_color[i:i + 2], 16) for i in (1, 3, 5)]) / 255.0


def test_screenshot_is_not_blank_and_shows_the_charts(report_path: Path, tmp_path: Path) -> None:
    shot = tmp_path / "report.png"
    _run([f"--window-size={WINDOW[0]},{WINDOW[1]}", f"--screenshot={shot}",
          report_path.resolve().as_uri()], tmp_path / "profile")
    image = imread(shot)[..., :3]
    assert image.shape[:2] == (WINDOW[1], WINDOW[0])
    assert float(image.var()) > 0.01, "blank screenshot"
    non_white = (image < 0.95).any(axis=2).mean()
    assert non_white > 0.08, f"only {non_white:.1%} of the page is drawn on"
    # The curves' colours appear only in the charts: the inline PNGs were decoded and drawn.
    for color in (RAW_COLOR, RECAL_COLOR):
        close = (np.abs(image - _rgb(color)) < 0.06).all(axis=2).sum()
        assert close > 500, f"{color}: {close} pixels"


def test_dom_has_every_section_heading(report_path: Path, tmp_path: Path) -> None:
    dom = _run(["--dump-dom", report_path.resolve().as_uri()], tmp_path / "profile")
    text = dom.stdout.decode("utf-8")
    for sid, title in SECTIONS:
        assert f'<section id="{sid}"><h2>{title}</h2>' in text, sid
    assert text.count("<img ") >= 6
