"""The proxy-against-gold benchmark reads both curves from each run's metrics and lines them up."""

import json

import pytest

from flowrl.benchmarks.reward_hacking import curves, main


def write_run(folder, points):
    folder.mkdir(parents=True)
    lines = []
    for iteration, proxy, gold in points:
        lines.append({"iteration": iteration, "reward/mean": proxy - 0.1, "loss": 0.0})
        if gold is not None:
            lines.append({"iteration": iteration, "eval/mean_score": proxy, "eval/overall": gold})
    (folder / "metrics.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")


def test_the_table_pairs_proxy_and_gold_per_variant(tmp_path, capsys):
    write_run(tmp_path / "default_seed0", [(0, 0.70, 0.40), (5, 0.75, None), (10, 0.80, 0.35)])
    write_run(tmp_path / "kl_seed0", [(0, 0.70, 0.40), (10, 0.72, 0.42)])
    assert curves(tmp_path / "default_seed0") == [
        {"iteration": 0, "proxy": 0.70, "gold": 0.40, "train_reward": pytest.approx(0.6)},
        {"iteration": 10, "proxy": 0.80, "gold": 0.35, "train_reward": pytest.approx(0.7)},
    ]  # the evaluations only; iteration 5 had none
    plot = tmp_path / "curves.png"
    assert main(["--runs", str(tmp_path), "--skip-train", "--plot", str(plot), "--json", str(tmp_path / "c.json")]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0] == "| iteration | default proxy | default gold | kl proxy | kl gold |"
    assert table[-1] == "| 10 | 0.800 | 35.0% | 0.720 | 42.0% |"  # the proxy rose while the gold fell
    assert plot.stat().st_size > 0 and json.loads((tmp_path / "c.json").read_text())["kl"][1]["gold"] == 0.42
