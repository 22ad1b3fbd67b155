"""benchmarks/race_table.py: the race's markdown table from run folders and eval JSON files."""
import importlib.util
import json
from pathlib import Path

import pytest

SPEC = importlib.util.spec_from_file_location("race_table", Path(__file__).resolve().parents[1] / "benchmarks" / "race_table.py")
race_table = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(race_table)

FLOOR = dict(kid=-0.6, kid_se=18.0, fid=8.9, inception_score=9.65, precision=0.9, recall=0.89, confident=0.967)


def run_with_scores(tmp_path, name, elapsed, scores):
    run = tmp_path / name
    run.mkdir()
    (run / "log.jsonl").write_text(json.dumps(dict(step=10, elapsed=elapsed / 2)) + "\n"
                                   + json.dumps(dict(step=20, elapsed=elapsed)) + "\n")
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(dict(kid=100.0, kid_se=10.0, fid=20.0, inception_score=9.0, precision=0.8, recall=0.7,
                                    confident=0.95, n=2000, floor=FLOOR, **scores)))
    return f"{run}:{path}"


def test_rows_carry_the_runs_cost_and_scores_in_the_order_given(tmp_path, capsys):
    flow = run_with_scores(tmp_path, "flow", 100.0, dict(sampler="heun", steps=10, guidance=0.5))
    old = run_with_scores(tmp_path, "old", 50.0, {})
    race_table.main([f"flow={flow}", f"old={old}:dpm-solver++ 20 (w = 1), seed 1"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[2] == ("| flow | 20 | 100 | 5.000 | heun 10 (w = 0.5) | 2000 | 100 ± 10 | 20.0 | 9.00 | 0.800 "
                        "| 0.700 | 95.0 % |")
    assert lines[3].startswith("| old | 20 | 50 | 2.500 | dpm-solver++ 20 (w = 1), seed 1 |")
    assert lines[4].startswith("| floor: real held-out digits | – | – | – | – | 2000 | -1 ± 18 | 8.9 |")


def test_scores_from_a_samples_file_need_to_say_how_they_were_drawn(tmp_path):
    old = run_with_scores(tmp_path, "old", 50.0, {})
    with pytest.raises(SystemExit, match="holds no sampler.*add :HOW"):
        race_table.main([f"old={old}"])


@pytest.mark.parametrize("spec", ["flow", "flow=runs/flow", "=a:b"])
def test_a_malformed_argument_is_refused_in_one_line(spec):
    with pytest.raises(SystemExit, match="expected name=RUN:EVAL_JSON"):
        race_table.main([spec])


def test_a_missing_run_folder_is_refused_naming_it(tmp_path):
    with pytest.raises(SystemExit, match="log.jsonl"):
        race_table.main([f"x={tmp_path / 'nowhere'}:{tmp_path / 'x.json'}"])
