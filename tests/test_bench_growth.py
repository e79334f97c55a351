"""data.minimind_o.bench_growth: a grid point (tiny model, tiny sizes) and the 2-process DDP scaling run print JSON
lines with machine, threads, dtype and load, and finite figures; a point's batches respect the token budget."""
import json
import math

import pytest


def figures(out: str) -> list[dict]:
    return [json.loads(x) for x in out.splitlines() if x.startswith("{")]


def test_point_in_process_respects_budget():
    from data.minimind_o.bench_growth import point

    res = point(64, 256, 1, 1, ["stage=sft_t2a", "model=minimind_o_tiny"])
    assert res["max_len"] == 64 and res["budget"] == 256 and res["steps"] == 1
    for key in ("seconds", "useful_tokens_per_s", "padded_tokens_per_s", "peak_rss_mib"):
        assert math.isfinite(res[key]) and res[key] > 0, key
    assert res["useful_tokens_per_s"] <= res["padded_tokens_per_s"]
    assert res["rows_per_batch"] * 48 <= 256  # rows lay out to >= 75 % of max_len (48 positions)


@pytest.mark.slow
def test_grid_and_ddp_print_finite_json(capsys):
    from data.minimind_o.bench_growth import main

    assert main(["--max-len", "64", "128", "--budgets", "64", "256", "--steps", "1", "model=minimind_o_tiny"]) == 0
    grid = figures(capsys.readouterr().out)
    assert [(r["max_len"], r["budget"]) for r in grid] == [(64, 64), (64, 256), (128, 256)]  # budget < max_len: none
    assert main(["--mode", "ddp", "--steps", "1"]) == 0
    (ddp,) = figures(capsys.readouterr().out)
    for rec in [*grid, ddp]:
        assert {"machine", "threads", "dtype", "load", "unit"} <= set(rec) and rec["dtype"] == "float32"
        assert math.isfinite(rec["value"]) and rec["value"] > 0
    assert ddp["figure"] == "ddp_scaling_efficiency" and ddp["processes"] == 2
