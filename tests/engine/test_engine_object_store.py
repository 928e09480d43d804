"""A batch whose slides and output store live in S3 (a local moto server), end to end.

``drmime-batch submit`` and ``run`` are subprocesses; the run's LocalCluster workers are further
processes. They all reach the bucket through the AWS_* variables only, as a deployment does.
The queue file stays local.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import tifffile
from _batch_data import FAST, SHIFT, cli, make_pairs, peek
from _s3_support import moto_s3
from PIL import Image

from drmime_batch.io import pair_is_complete, read_transform

pytestmark = [pytest.mark.cluster, pytest.mark.slow]  # the CLI's run starts a LocalCluster


def test_batch_reads_and_writes_s3(tmp_path):
    data = tmp_path / "data"
    make_pairs(data, n_good=2)
    # the fixed slide as a tiled TIFF (byte-range reads on the workers), the moving ones as PNGs
    fixed = np.asarray(Image.open(data / "fixed.png"))
    tifffile.imwrite(data / "fixed.tif", fixed, tile=(64, 64), photometric="rgb", compression="zlib")
    with moto_s3() as s3:
        fixed_url = s3.upload(data / "fixed.tif", "slides/fixed.tif")
        moving = [s3.upload(data / f"moving{i}.png", f"slides/moving{i}.png") for i in range(2)]
        manifest = tmp_path / "manifest.csv"
        manifest.write_text("pair_id,fixed,moving\n" + "".join(
            f"good{i},{fixed_url},{url}\n" for i, url in enumerate(moving)))
        out, queue = s3.url("runs/out.zarr"), tmp_path / "q.sqlite"

        cli("submit", manifest, "--queue", queue, "--out", out, *FAST, env=s3.env)
        rows = peek(queue)
        assert {r.fixed for r in rows.values()} == {fixed_url} and {r.out for r in rows.values()} == {out}
        cli("run", "--queue", queue, "--workers", "1", "--quiet", env=s3.env)

        rows = peek(queue)
        assert {k: (r.state, r.error) for k, r in rows.items()} == {"good0": ("done", None), "good1": ("done", None)}
        for name, row in rows.items():
            assert pair_is_complete(out, name)
            matrix, attrs = read_transform(out, name)  # from the bucket
            np.testing.assert_allclose(matrix, row.matrix)
            assert np.allclose(matrix[:2, 2], SHIFT, atol=4.0), matrix
            assert attrs["fixed"] == fixed_url and attrs["moving"] == moving[int(name[-1])]
            keys = s3.keys(f"runs/out.zarr/{name}")
            assert f"runs/out.zarr/{name}/registered/zarr.json" in keys
            png = s3.fs.cat_file(f"{s3.bucket}/runs/out.zarr/{name}/qc.png")
            assert Image.open(io.BytesIO(png)).mode == "RGB"
            assert not [k for k in keys if "/.drmime" in k]

        # the HTML report copies the QC pictures out of the bucket
        from drmime_batch.evaluation import write_html_report

        report_rows = [{"pair_id": k, "state": r.state, "qc_png": (r.result or {}).get("qc_png")}
                       for k, r in rows.items()]
        assert {r["qc_png"] for r in report_rows} == {f"{out}/good0/qc.png", f"{out}/good1/qc.png"}
        write_html_report(report_rows, tmp_path / "html", title="s3 batch")
        assert len(list((tmp_path / "html" / "qc").glob("*.png"))) == 2
