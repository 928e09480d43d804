"""The HTML report on a small finished queue: template, order, pictures, offline, escaping.

The queue is real (SQLite) and so are the images (crops of the bundled H&E), the landmark files
and, for one pair, the output store (transform and registered image written by the real writers);
the registrations themselves are stood in for by known translations, so the test takes seconds.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from drmime_batch.cli import main
from drmime_batch.evaluation import evaluate_matrix, read_landmarks, write_html_report, write_landmarks
from drmime_batch.evaluation._report_views import checkerboard, overlay, stain_density
from drmime_batch.queue import ManifestEntry, Queue

EXAMPLE = Path(__file__).resolve().parents[2] / "drmime_batch" / "examples" / "cima-lung-lesion3"
HE = EXAMPLE / "images" / "29-041-Izd2-w35-He-les3.jpg"
SHIFT = np.array([7.0, -4.0])  # fixed pixel p shows the tissue of moving pixel p + SHIFT


def _translation(shift: np.ndarray) -> np.ndarray:
    m = np.eye(3)
    m[:2, 2] = shift
    return m


@pytest.fixture()
def small_batch(tmp_path: Path) -> Path:
    """A finished queue of four pairs: registered (store written), flagged, failed, no landmarks."""
    from drmime_batch.io import open_image, warp, write_registered, write_transform

    src = np.asarray(Image.open(HE).convert("RGB"))[::3, ::3]
    fixed = np.ascontiguousarray(src[10:170, 20:200])
    moving = np.ascontiguousarray(src[14:174, 13:193])
    # a faint second stain: the moving image washed out towards white
    faint = (255 - (255 - moving.astype(np.float64)) * 0.25).astype(np.uint8)
    data = tmp_path / "data"
    data.mkdir()
    Image.fromarray(fixed).save(data / "fixed.png")
    Image.fromarray(faint).save(data / "moving.png")
    rng = np.random.default_rng(0)
    f_lm = rng.uniform([10, 10], [170, 150], size=(12, 2))
    write_landmarks(data / "fixed.csv", f_lm)
    write_landmarks(data / "moving.csv", f_lm + SHIFT + rng.normal(0, 1.0, size=f_lm.shape))
    entry = {"fixed": str(data / "fixed.png"), "moving": str(data / "moving.png"),
             "fixed_landmarks": str(data / "fixed.csv"), "moving_landmarks": str(data / "moving.csv")}
    entries = [
        ManifestEntry("good", **entry),
        ManifestEntry("wrong", **entry),
        ManifestEntry("broken", **entry),
        ManifestEntry("plain", entry["fixed"], entry["moving"]),
    ]
    qpath, store = tmp_path / "q.sqlite", tmp_path / "out.zarr"
    curve = list(0.4 * (1 - np.exp(-np.arange(300) / 40.0)))  # longer than the plot's 200 points
    with Queue.open(qpath, create=True) as q:
        q.add(entries, out=store)
        for e, shift, flagged in (("good", SHIFT + 0.3, False), ("wrong", SHIFT + [25.0, 10.0], True),
                                  ("plain", SHIFT, False)):
            m = _translation(shift)
            q.claim(e)
            result = {"iterations": 3000, "metric": "mine", "fixed_shape": [160, 180],
                      "registration": {"loss_history": curve, "metric": "mine"},
                      "qc": {"score": 0.2 if flagged else 0.9, "flagged": flagged,
                             "reasons": ["the <script>overlap</script> is poor"] if flagged else []}}
            if e != "plain":
                result["landmarks"] = evaluate_matrix(m, read_landmarks(data / "fixed.csv"),
                                                      read_landmarks(data / "moving.csv"),
                                                      fixed_shape=(160, 180)).to_dict()
            q.finish(e, matrix=m.tolist(), result=result, seconds=1.0)
        q.claim("broken")
        q.fail("broken", "RegistrationDivergedError: the similarity became non-finite", seconds=1.0)
    # the store holds what a batch writes for "good": its transform and registered image
    m = _translation(SHIFT + 0.3)
    write_transform(store, "good", m, attrs={"pair_id": "good"})
    write_registered(store, "good", warp(open_image(data / "moving.png"), m, like=open_image(data / "fixed.png")))
    return qpath


class _Page(HTMLParser):
    """Images, links, pair sections (in order) and the text of the page."""

    def __init__(self) -> None:
        super().__init__()
        self.imgs: list[tuple[str, str]] = []  # (src, figure class)
        self.urls: list[str] = []
        self.sections: list[dict[str, str]] = []
        self.text: list[str] = []
        self._figure = ""

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        if tag == "figure":
            self._figure = a.get("class", "")
        if tag == "img":
            self.imgs.append((a["src"], self._figure))
        if tag == "section":
            self.sections.append(a)
        self.urls += [v for k, v in a.items() if k in ("src", "href")]

    def handle_endtag(self, tag):
        if tag == "figure":
            self._figure = ""

    def handle_data(self, data):
        if data.strip():
            self.text.append(data.strip())


def _parse(page: Path) -> _Page:
    parser = _Page()
    parser.feed(page.read_text(encoding="utf-8"))
    parser.close()
    return parser


def test_report_command_writes_an_offline_page_from_the_template(small_batch: Path, tmp_path: Path) -> None:
    out = tmp_path / "html"
    assert main(["report", "--queue", str(small_batch), "--html", str(out)]) == 0
    html = (out / "index.html").read_text(encoding="utf-8")
    page = _parse(out / "index.html")
    assert '<meta name="generator" content="drmime-batch report template">' in html
    assert not re.search(r"https?://", html)  # nothing from the network
    for src, _ in page.imgs:  # every picture is a file of the folder, linked relatively
        assert not Path(src).is_absolute() and ".." not in Path(src).parts, src
        assert (out / src).is_file(), src
    # flagged first, then failed, then the rest in queue order
    assert [s["data-pair"] for s in page.sections] == ["wrong", "broken", "good", "plain"]
    assert [s["data-flagged"] for s in page.sections] == ["true", "false", "false", "false"]
    # the QC score and reasons of the flagged pair are on the page, escaped
    assert "the <script>overlap</script> is poor" in page.text and "<script>" not in html
    assert "quality score 0.20" in page.text
    assert any("RegistrationDivergedError" in t for t in page.text)
    kinds: dict[str, set[str]] = {}
    for src, kind in page.imgs:
        pair = next((s["data-pair"] for s in page.sections if f"-{s['data-pair']}-" in src), "batch")
        kinds.setdefault(pair, set()).add(kind)
    assert kinds["good"] == kinds["wrong"] == {"overlay", "checkerboard", "landmarks", "curve"}
    assert kinds["plain"] == {"overlay", "checkerboard", "curve"}  # no landmarks, no vectors
    assert "broken" not in kinds  # a failed pair has no pictures
    assert {kind for src, kind in page.imgs if "rtre" in src} == {"rtre-distribution"}
    # the pair whose store has a registered image shows that image; the others are warped here
    captions = [t for t in page.text if t.startswith("overlay:")]
    assert sum("in the output store" in c for c in captions) == 1 and len(captions) == 3
    for src, _ in page.imgs:
        with Image.open(out / src) as im:
            assert max(im.size) <= 800, (src, im.size)


def test_overlay_shows_both_stains_and_a_misregistration(small_batch: Path, tmp_path: Path) -> None:
    out = tmp_path / "html"
    main(["report", "--queue", str(small_batch), "--html", str(out)])
    good = np.asarray(Image.open(next((out / "figures").glob("*-good-overlay.png"))).convert("RGB"), np.float64)
    wrong = np.asarray(Image.open(next((out / "figures").glob("*-wrong-overlay.png"))).convert("RGB"), np.float64)
    # both stains visible: the fixed stain takes out green, the moving one red and blue; the moving
    # image is washed out to a quarter of its contrast, yet after the normalisation it shows as much
    # tissue as the fixed one
    for img in (good, wrong):
        fixed_tissue = (img[..., 1] < 100).mean()
        moving_tissue = ((img[..., 0] < 100) & (img[..., 2] < 100)).mean()
        assert fixed_tissue > 0.05 and 0.5 < moving_tissue / fixed_tissue < 2.0, (fixed_tissue, moving_tissue)
    # a registration 27 pixels off leaves much more single-coloured tissue than a right one
    def disagreement(img: np.ndarray) -> float:
        return float(np.abs(img[..., 0] - img[..., 1]).mean())

    assert disagreement(wrong) > 1.3 * disagreement(good)


def test_report_escapes_pair_ids_and_keeps_the_table(small_batch: Path, tmp_path: Path) -> None:
    from drmime_batch.cli._cmd_batch import _report_rows

    with Queue.open(small_batch) as q:
        rows = _report_rows(q.rows())
    rows[2]["pair_id"] = "<b>&"  # not a valid queue id, but the writer must not trust its rows
    out = write_html_report(rows, tmp_path / "html", title="batch <i>")
    html = out.read_text(encoding="utf-8")
    page = _parse(out)
    assert "<b>&" in page.text and "<b>" not in html and "&lt;b&gt;&amp;" in html
    assert "<title>batch &lt;i&gt;</title>" in html
    for src, _ in page.imgs:
        assert (out.parent / src).is_file() and "<" not in src and "&" not in src


def test_the_module_builds_no_html_itself() -> None:
    import drmime_batch.evaluation._report as report

    source = Path(report.__file__).read_text(encoding="utf-8")
    assert not re.search(r"<(tr|td|th|table|img|figure|html|body)\b", source)
    template = Path(report.__file__).parent / "templates" / report.TEMPLATE
    assert template.is_file() and "<table id=\"pairs\">" in template.read_text(encoding="utf-8")


def test_pictures_normalise_each_stain() -> None:
    dark = np.full((20, 20, 3), 250, np.uint8)
    dark[5:15, 5:15] = 60
    faint = np.full((20, 20, 3), 250, np.uint8)
    faint[5:15, 5:15] = 225
    # after the stretch a faint stain is as strong as a dark one
    assert stain_density(faint)[10, 10] == pytest.approx(stain_density(dark)[10, 10]) == pytest.approx(1.0)
    o = overlay(dark, faint)
    assert o[10, 10].tolist() == [0, 0, 0] and o[0, 0].tolist() == [255, 255, 255]
    c = checkerboard(dark, faint, tiles=2)
    assert c[7, 7].tolist() == [255, 0, 255] and c[7, 12].tolist() == [0, 255, 0]


def test_page_renders_in_a_headless_browser(small_batch: Path, tmp_path: Path) -> None:
    browser = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)),
                   None)
    if browser is None:
        pytest.skip("no chromium on PATH: the page is not rendered (the other tests check its files)")
    out = tmp_path / "html"
    main(["report", "--queue", str(small_batch), "--html", str(out)])
    shot = tmp_path / "shot.png"
    proc = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
                           "--window-size=1000,1400", (out / "index.html").as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert shot.is_file(), proc.stderr[-2000:]
    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape[:2] == (1400, 1000)
    # the page is not blank: text and pictures cover a fair share of it
    assert (img.min(axis=-1) < 200).mean() > 0.02


def test_the_template_is_package_data() -> None:
    import tomllib
    from fnmatch import fnmatch

    root = Path(__file__).resolve().parents[2]
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["drmime_batch"]
    template = "evaluation/templates/report.html.j2"
    assert (root / "drmime_batch" / template).is_file()
    assert any(fnmatch(template, g) for g in globs), globs


def test_a_pair_whose_image_is_gone_gets_a_note_not_a_crash(small_batch: Path, tmp_path: Path) -> None:
    from drmime_batch.cli._cmd_batch import _report_rows

    with Queue.open(small_batch) as q:
        rows = _report_rows(q.rows())
    plain = next(r for r in rows if r["pair_id"] == "plain")
    plain["fixed"] = str(tmp_path / "gone.png")
    out = write_html_report(rows, tmp_path / "html", title="batch")
    page = _parse(out)
    notes = [t for t in page.text if t.startswith("no overlay:")]
    assert len(notes) == 1 and "gone.png" in notes[0]
    # its curve is still drawn, and the other pairs keep their pictures
    assert {kind for src, kind in page.imgs if "-plain-" in src} == {"curve"}
    assert {kind for src, kind in page.imgs if "-good-" in src} == {"overlay", "checkerboard", "landmarks", "curve"}
