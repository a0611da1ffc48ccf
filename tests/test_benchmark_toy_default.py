"""benchmarks/toy_default.py: its table and results.json hold the evaluation of the base and of
each run's final model, judged on the requested split and sampler."""

import json

import pytest
import torch

from conftest import tiny_model
from flowrl.benchmarks import toy_default
from flowrl.benchmarks.toyshapes.evaluate import evaluate_toyshapes
from flowrl.benchmarks.toyshapes.report import paired_toyshapes, paired_toyshapes_scores
from flowrl.generate import sampler
from flowrl.policies.toy import load_toy, save_toy


def test_benchmark_evaluates_the_base_and_the_runs_as_asked(tmp_path, capsys, monkeypatch):
    calls = []

    def recorded(sample, per_category, **options):
        calls.append(options)
        return evaluate_toyshapes(sample, per_category, **options)

    monkeypatch.setattr("flowrl.benchmarks.toyshapes.evaluate.evaluate_toyshapes", recorded)
    base = save_toy(tiny_model(0), tmp_path / "base", dtype=torch.float32)
    save_toy(tiny_model(1), tmp_path / "runs" / "seed0" / "final", dtype=torch.float32)
    args = [
        "--seeds",
        "0",
        "--skip-train",
        "--runs",
        str(tmp_path / "runs"),
        "--per-category",
        "2",
        "--base",
        str(base),
        "--split",
        "train",
        "--eta",
        "0.3",
    ]
    assert toy_default.main(args) == 0
    record = json.loads((tmp_path / "runs" / "results.json").read_text())
    assert record["settings"] == {"per_category": 2, "split": "train", "eta": 0.3, "base": str(base), "overrides": []}
    for name, directory in (("base", base), ("seed 0", tmp_path / "runs" / "seed0" / "final")):
        direct, _ = evaluate_toyshapes(sde_sampler(directory), 2, steps=10, guidance=4.0, split="train", eta=0.3)
        assert record["results"][name] == {
            "overall": direct.overall,
            **direct.accuracy,
            "mean_score": direct.mean_score,
        }
    assert [(c["split"], c["eta"], c["steps"]) for c in calls] == [("train", 0.3, 10)] * 2  # base, then the run
    table = capsys.readouterr().out
    assert (
        "| category | base | seed 0 |" in table
        and "mean overall of 1 run(s)" in table
        and "| mean dense score |" in table
    )
    base_report, _ = evaluate_toyshapes(sde_sampler(base), 2, steps=10, guidance=4.0, split="train", eta=0.3)
    tests, _ = paired_toyshapes(base_report, direct)  # direct: the run's report, from the loop above
    overall = record["paired"]["seed 0"]["Overall"]
    assert (
        overall["difference"]
        == pytest.approx(direct.overall - base_report.overall)
        == pytest.approx(tests[-1].difference)
    )
    assert (overall["a_only"], overall["b_only"], overall["p_value"]) == (
        tests[-1].a_only,
        tests[-1].b_only,
        tests[-1].p_value,
    )
    assert set(record["paired"]["seed 0"]) == {*direct.accuracy, "Overall"}
    assert f"seed 0: {100 * overall['difference']:+.1f} pp overall" in table
    scores, _ = paired_toyshapes_scores(base_report, direct)
    dense = record["paired_scores"]["seed 0"]["Overall"]
    assert (
        dense["difference"]
        == pytest.approx(direct.mean_score - base_report.mean_score)
        == pytest.approx(scores[-1].difference)
    )
    assert f"seed 0: dense score {dense['difference']:+.3f} overall" in table


def test_the_supervised_control_continues_the_base_and_is_a_column(tmp_path, capsys):
    base = save_toy(tiny_model(0), tmp_path / "base", dtype=torch.float32)
    runs = tmp_path / "runs"
    args = ["--seeds", "--runs", str(runs), "--per-category", "1", "--base", str(base), "--supervised-steps", "2"]
    assert toy_default.main([*args, "--supervised-split", "train"]) == 0
    record = json.loads((runs / "results.json").read_text())
    trained = runs / "supervised_train" / "ema"
    assert json.loads((runs / "supervised_train" / "log.jsonl").read_text().splitlines()[0])["step"] == 0
    changed = load_toy(trained).transformer.state_dict()
    assert any(not torch.equal(v, load_toy(base).transformer.state_dict()[k]) for k, v in changed.items())
    direct, _ = evaluate_toyshapes(
        sampler(load_toy(trained), 20, 4.0, batch_size=128), 1, steps=20, guidance=4.0, eta=0.0
    )
    assert record["results"]["supervised, train"] == {
        "overall": direct.overall,
        **direct.accuracy,
        "mean_score": direct.mean_score,
    }
    assert "| category | base | supervised, train |" in capsys.readouterr().out


def sde_sampler(directory):
    """The sampler the benchmark judges with --eta 0.3: DanceGRPO's SDE on the 10-step grid, guidance 4."""
    return sampler(load_toy(directory), 10, 4.0, eta=0.3, batch_size=128)


@pytest.mark.parametrize("bad", [["--base", "no_such_model_dir"], ["--eta", "-0.1"], ["--eta", "nan"]])
def test_benchmark_rejects_bad_input_before_any_work(tmp_path, bad, capsys):
    with pytest.raises(SystemExit) as failure:
        toy_default.main(["--skip-train", "--runs", str(tmp_path), *bad])
    assert failure.value.code == 2 and bad[1] in capsys.readouterr().err
