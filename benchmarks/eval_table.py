"""The JSON lines of ``benchmarks/eval_cells.sh`` as the markdown table of docs/experiments.md:

    python benchmarks/eval_table.py runs/evals.jsonl
"""
import json
import sys


def main(path):
    print("| run | sampler | steps | spacing / variance | FID | IS | precision | recall | floor FID | floor IS | N | wall s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for line in open(path):
        r = json.loads(line)
        # Rows written before --spacing defaulted to "uniform" hold null: DPM-Solver++'s default was quadratic then.
        how = r.get("spacing") or ("quadratic" if r["sampler"] == "dpm-solver++" else "uniform")
        if r["sampler"] == "ddpm":
            how += f", {r['variance']}"
        floor = r["floor"]
        print(f"| {r['run'].rstrip('/').split('/')[-1]} | {r['sampler']} | {r['steps']} | {how} | {r['fid']:.1f} | "
              f"{r['inception_score']:.2f} | {r['precision']:.2f} | {r['recall']:.2f} | {floor['fid']:.1f} | "
              f"{floor['inception_score']:.2f} | {r['n']} | {r['wall_s']} |")


if __name__ == "__main__":
    main(sys.argv[1])
