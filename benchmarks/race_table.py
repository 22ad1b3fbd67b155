"""The recipe race of docs/experiments.md as a markdown table, from each run folder and its eval JSON:

    python benchmarks/race_table.py "flow=runs/flow:runs/flow_eval.json" "lrcos=runs/lrcos:runs/lrcos_eval.json" ...

Each argument is ``name=RUN:EVAL_JSON``, or ``name=RUN:EVAL_JSON:HOW`` where the scores came from
``eval --samples`` (which cannot know the sampler) and HOW says how ``sample --npy`` drew them. The training cost comes from the run's own ``log.jsonl``
(its last line's step and ``elapsed`` seconds: the wall time of the training loop, previews
excluded when ``--sample-every 0``), the scores from the ``eval --json`` file; the floor row (real
held-out digits at the same N) is the first file's. Rows keep the order given.
"""
import json
import sys
from pathlib import Path


def last_log_line(run: Path) -> dict:
    lines = [line for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    return json.loads(lines[-1])


def scores_cells(s: dict) -> str:
    return (f"{s['kid']:.0f} ± {s['kid_se']:.0f} | {s['fid']:.1f} | {s['inception_score']:.2f} | {s['precision']:.3f} "
            f"| {s['recall']:.3f} | {100 * s['confident']:.1f} %")


def main(specs):
    rows = []
    for spec in specs:
        name, _, paths = spec.partition("=")
        run, _, rest = paths.partition(":")
        scores, _, how = rest.partition(":")
        if not name or not run or not scores:
            raise SystemExit(f"{spec!r}: expected name=RUN:EVAL_JSON[:HOW]")
        try:
            log, s = last_log_line(Path(run)), json.loads(Path(scores).read_text())
        except (OSError, ValueError, IndexError) as error:
            raise SystemExit(f"{spec!r}: {error}")
        if how:
            s["how"] = how
        elif "sampler" not in s:
            raise SystemExit(f"{scores} holds no sampler (scored from --samples?): add :HOW to {spec!r}")
        rows.append((name, log, s))
    print("| recipe | steps | train s | s / step | sampler (w) | N | KID ± s.e. | FID | IS | precision | recall | confident |")
    print("|" + " --- |" * 12)
    for name, log, s in rows:
        sampler = s.get("how") or f"{s['sampler']} {s['steps']} (w = {s['guidance']:g})"
        print(f"| {name} | {log['step']} | {log['elapsed']:.0f} | {log['elapsed'] / log['step']:.3f} | {sampler} "
              f"| {s['n']} | {scores_cells(s)} |")
    floor = rows[0][2]["floor"]
    print(f"| floor: real held-out digits | – | – | – | – | {rows[0][2]['n']} | {scores_cells(floor)} |")


if __name__ == "__main__":
    main(sys.argv[1:])
