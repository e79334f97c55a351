"""omni.bench_data on a tiny corpus (2,000 rows): every figure is printed as a JSON line with machine, threads and
load, and its numbers are finite."""
import json
import math

import pytest


@pytest.mark.parametrize("stage,source", [("sft_t2a", "parquet"), ("sft_t2a", "hf"), ("multimodal", "hf-stream")])
def test_bench_data_prints_finite_json_figures(stage, source, capsys, tmp_path):
    from omni.bench_data import main

    assert main(["--rows", "2000", "--shard-rows", "500", "--group-rows", "100", "--batches", "6",
                 "--rss-every", "2", "--steps", "1", "--out", str(tmp_path / "corpus"), "--source", source,
                 f"stage={stage}"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    figures = {x["figure"]: x for x in lines}
    # a rerun's build: MiniMind-O's index has an on-disk cache; `datasets` keeps its prepared arrow files
    cached = {"index_build_warm_s"} if stage == "sft_t2a" or source == "hf" else set()
    assert set(figures) == {"corpus", "index_build_s", "index_rss_mib", "loader_samples_per_s", "rss_curve_mib",
                            "step_samples_per_s", "loader_headroom", "peak_rss_mib"} | cached
    for rec in lines:
        assert {"machine", "threads", "load", "unit", "stage"} <= set(rec) and rec["threads"] >= 1
        assert rec["source"] == source
        assert len(rec["load"].split()) == 3
    assert figures["corpus"]["value"]["rows"] == 2000 and figures["corpus"]["value"]["shards"] == 4
    # every tiled row indexed (unique ids); a stream indexes its first chunk (data.hf.chunk_rows = 1000) at setup
    assert figures["index_build_s"]["rows_kept"] == (1000 if source == "hf-stream" else 2000)
    for name in (*cached, "index_build_s", "loader_samples_per_s", "step_samples_per_s", "loader_headroom", "peak_rss_mib"):
        assert math.isfinite(figures[name]["value"]) and figures[name]["value"] > 0, name
    curve = figures["rss_curve_mib"]["value"]
    assert [k for k, _, _ in curve] == [0, 2, 4, 5] and all(math.isfinite(v) and v > 0 for _, v, _ in curve)
    assert all(0 < anon <= rss for _, rss, anon in curve)  # the anonymous part of the RSS (Linux)
