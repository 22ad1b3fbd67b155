"""The JSON lines of ``benchmarks/eval_cells.sh`` as the markdown table of docs/experiments.md:

    python benchmarks/eval_table.py runs/evals.jsonl

Each score sits beside its floor (real held-out digits at the same N). Rows written before ``eval``
reported KID and the confident fraction show "–" there.
"""
import json
import sys


def kid(scores):
    return f"{scores['kid']:.2f} ± {scores['kid_se']:.2f}" if "kid" in scores else "–"


def fraction(scores, key):
    return f"{scores[key]:.2f}" if key in scores else "–"


def main(path):
    print("| run | sampler | steps | spacing / variance | KID | floor KID | FID | floor FID | IS | floor IS "
          "| precision | floor | recall | floor | confident | floor | N | wall s |")
    print("|" + " --- |" * 18)
    for line in open(path):
        r = json.loads(line)
        # Rows written before --spacing defaulted to "uniform" hold null: DPM-Solver++'s default was quadratic then.
        how = r.get("spacing") or ("quadratic" if r["sampler"] == "dpm-solver++" else "uniform")
        if r["sampler"] == "ddpm":
            how += f", {r['variance']}"
        floor = r["floor"]
        print(f"| {r['run'].rstrip('/').split('/')[-1]} | {r['sampler']} | {r['steps']} | {how} | {kid(r)} | "
              f"{kid(floor)} | {r['fid']:.1f} | {floor['fid']:.1f} | {r['inception_score']:.2f} | "
              f"{floor['inception_score']:.2f} | {r['precision']:.2f} | {floor['precision']:.2f} | {r['recall']:.2f} | "
              f"{floor['recall']:.2f} | {fraction(r, 'confident')} | {fraction(floor, 'confident')} | {r['n']} | "
              f"{r['wall_s']} |")


if __name__ == "__main__":
    main(sys.argv[1])
