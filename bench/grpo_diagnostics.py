"""Diagnostics behind the GRPO part of the learning benchmark (docs/grpo-analysis.md).

Two measurements on checkpoints of the GSM8K-calculator task of bench/configs/learning-grpo.yaml
(same data, same narrowing options, same held-out rule: GSM8K-test calculations whose prompt
is not a training prompt):

    python bench/grpo_diagnostics.py passk CHECKPOINT [CHECKPOINT ...] [--k 8]
        held-out greedy pass rate, sampled pass@1 at temperature 1 (mean over k samples) and
        pass@k, overall and per operator.

        Also the share of greedy answers that work the digits out first (the `scratchpad`
        option of gsm8k_calc, `12*52` -> `426=624`) and the sampled accuracy of each style.

    python bench/grpo_diagnostics.py files DIR [--n 30000]
        data files for GRPO variants: DIR/fresh.jsonl, calculations nobody labelled (operands
        of GSM8K-train calculations recombined, same narrowing, no calculation of GSM8K train
        or test);
        DIR/heldout.jsonl, the held-out calculations (for a run whose stages do not train on
        GSM8K train); DIR/both_styles.jsonl, every training calculation answered directly and
        (whole non-negative results) with the scratchpad (prompt_response rows);
        DIR/marked_styles.jsonl, every training calculation answered directly twice and worked
        out once behind a '#' (`#426=624`).

    python bench/grpo_diagnostics.py offline CHECKPOINT --lr 5e-5 [--steps 150] [--prompts 16]
        a minimal GRPO loop in plain PyTorch + transformers (HF generate, group-normalised
        advantages, token-mean policy gradient, AdamW, no Ray/vLLM/DeepSpeed), printing the mean
        training reward every 25 steps. It checks whether rlstack's GRPO behaviour on this task
        is the algorithm's or the system's.

All read ../shared/data beside the repository and run on the CPU with 2 threads.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections import defaultdict
from pathlib import Path

import torch
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlstack.data.formats import gsm8k_calc
from rlstack.stages.batches import prompt_ids

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "bench" / "configs" / "learning-grpo.yaml"
OPERATOR = re.compile(r"[-+*/]")
NUMBER = re.compile(r"-?\d+")


def task_rows() -> tuple[list[dict], list[dict]]:
    """(training calculations, held-out calculations) as the benchmark builds them."""
    cfg = OmegaConf.load(CONFIG)
    data_root = REPO / cfg.data_root  # relative to the repository root, as `make` runs it
    options = OmegaConf.to_container(cfg.grpo.data.options)

    def load(split: str) -> list[dict]:
        path = data_root / "gsm8k" / f"{split}.jsonl"
        with path.open() as f:
            return gsm8k_calc([json.loads(line) for line in f], str(path), **options)

    train, test = load("train"), load("test")
    seen = {r["prompt"] for r in train}
    held = [r for r in test if r["prompt"] not in seen][: cfg.grpo.data.max_eval_rows]
    return train, held


def last_number(text: str) -> str | None:
    found = NUMBER.findall(text)
    return found[-1] if found else None


def load(checkpoint: str):
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    return tokenizer, model


def sample(model, tokenizer, prompt: list[int], n: int, greedy: bool) -> list[list[int]]:
    """n responses (token ids up to and including the end token) to one prompt."""
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt] * n),
            max_new_tokens=16,
            do_sample=not greedy,
            temperature=1.0,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id or 0,
        )
    responses = []
    for ids in out[:, len(prompt) :].tolist():
        if tokenizer.eos_token_id in ids:
            ids = ids[: ids.index(tokenizer.eos_token_id) + 1]
        responses.append(ids)
    return responses


def correct(tokenizer, response: list[int], reference: str) -> bool:
    return last_number(tokenizer.decode(response, skip_special_tokens=True)) == reference


def passk(checkpoints: list[str], k: int) -> None:
    _, held = task_rows()
    for checkpoint in checkpoints:
        torch.manual_seed(0)
        tokenizer, model = load(checkpoint)
        model.eval()
        by_op: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0, 0.0])
        worked = 0
        styles = {True: [0, 0], False: [0, 0]}  # scratchpad?: [samples, correct]
        for row in held:
            prompt = prompt_ids(tokenizer, row["prompt"], 64)
            response = sample(model, tokenizer, prompt, 1, True)[0]
            greedy = correct(tokenizer, response, row["reference"])
            worked += "=" in tokenizer.decode(response, skip_special_tokens=True)
            hits = []
            for r in sample(model, tokenizer, prompt, k, False):
                hits.append(correct(tokenizer, r, row["reference"]))
                style = styles["=" in tokenizer.decode(r, skip_special_tokens=True)]
                style[0] += 1
                style[1] += hits[-1]
            ops = OPERATOR.findall(row["prompt"])
            for key in ("all", ops[0] if ops else "none"):
                stats = by_op[key]
                stats[0] += 1
                stats[1] += greedy
                stats[2] += sum(hits) / k
                stats[3] += any(hits)
        print(
            f"{checkpoint}: {len(held)} held-out calculations, "
            f"{worked / len(held):.1%} of greedy answers worked out first (scratchpad); sampled "
            f"accuracy with scratchpad {_share(*styles[True])}, direct {_share(*styles[False])}"
        )
        for key, (n, greedy, pass1, pass_k) in sorted(by_op.items(), key=lambda x: -x[1][0]):
            print(
                f"  {key:>4} n={n:3d}  greedy {greedy / n:6.1%}  sampled pass@1 {pass1 / n:6.1%}"
                f"  pass@{k} {pass_k / n:6.1%}"
            )


def _share(samples: int, hits: int) -> str:
    return f"{hits / samples:.1%} of {samples}" if samples else "- of 0"


def write_files(out: Path, n: int) -> None:
    train, held = task_rows()
    cfg = OmegaConf.load(CONFIG)
    path = REPO / cfg.data_root / "gsm8k" / "test.jsonl"
    with path.open() as f:
        options = OmegaConf.to_container(cfg.grpo.data.options)
        test = {
            r["prompt"] for r in gsm8k_calc([json.loads(line) for line in f], "test", **options)
        }
    operands: dict[str, tuple[list[str], list[str]]] = defaultdict(lambda: ([], []))
    for row in train:
        match = re.fullmatch(r"(\d+)([-+*/])(\d+)", row["prompt"])
        if match:
            left, op, right = match.groups()
            operands[op][0].append(left)
            operands[op][1].append(right)
    rng, made, fresh = random.Random(0), set(), []
    seen = test | {r["prompt"] for r in train}  # nobody labelled: in neither GSM8K split
    ops = [op for op, (left, _) in operands.items() for _ in left]  # as often as in GSM8K
    for _ in range(100 * n):
        if len(fresh) == n:
            break
        op = rng.choice(ops)
        left, right = rng.choice(operands[op][0]), rng.choice(operands[op][1])
        expression = f"{left}{op}{right}"
        a, b = int(left), int(right)
        if (
            len(expression) > options["max_prompt_chars"]
            or expression in seen
            or expression in made
        ):
            continue
        if op == "/" and (b == 0 or a % b):
            continue
        value = {"+": a + b, "-": a - b, "*": a * b, "/": a // max(b, 1)}[op]
        if value >= 0:
            made.add(expression)
            fresh.append((expression, value))
    out.mkdir(parents=True, exist_ok=True)
    with (out / "fresh.jsonl").open("w") as f:
        f.writelines(json.dumps({"answer": f"<<{e}={v}>>"}) + "\n" for e, v in fresh)
    with (out / "heldout.jsonl").open("w") as f:
        f.writelines(
            json.dumps({"answer": f"<<{r['prompt']}={r['reference']}>>"}) + "\n" for r in held
        )
    both = [(r["prompt"], r["reference"]) for r in train]
    both += [(p, f"{v[::-1]}={v}") for p, v in both if v.isdigit()]  # as gsm8k_calc's scratchpad
    with (out / "both_styles.jsonl").open("w") as f:
        f.writelines(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in both)
    marked = []  # direct twice, worked out once behind a '#' that names the style up front
    for row in train:
        p, v = row["prompt"], row["reference"]
        marked += [(p, v), (p, v)] + ([(p, f"#{v[::-1]}={v}")] if v.isdigit() else [])
    with (out / "marked_styles.jsonl").open("w") as f:
        f.writelines(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in marked)
    print(f"{out}: {len(fresh)} fresh, {len(held)} held-out, {len(both)} both-style rows")


def offline_grpo(checkpoint: str, lr: float, steps: int, prompts: int, group: int) -> None:
    train, _ = task_rows()
    rng = random.Random(0)
    torch.manual_seed(0)
    tokenizer, model = load(checkpoint)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    rewards: list[float] = []
    for step in range(1, steps + 1):
        seqs, masks, advantages = [], [], []
        model.eval()
        for row in rng.sample(train, prompts):
            prompt = prompt_ids(tokenizer, row["prompt"], 64)
            responses = sample(model, tokenizer, prompt, group, False)
            scores = torch.tensor(
                [float(correct(tokenizer, r, row["reference"])) for r in responses]
            )
            rewards.append(scores.mean().item())
            adv = (scores - scores.mean()) / (scores.std() + 1e-6)
            for response, a in zip(responses, adv.tolist()):
                seqs.append(prompt + response)
                masks.append([0.0] * (len(prompt) - 1) + [1.0] * len(response))
                advantages.append(a)
        width = max(map(len, seqs))
        ids = torch.zeros(len(seqs), width, dtype=torch.long)
        attention = torch.zeros(len(seqs), width, dtype=torch.long)
        mask = torch.zeros(len(seqs), width - 1)
        for i, (seq, m) in enumerate(zip(seqs, masks)):
            ids[i, : len(seq)], attention[i, : len(seq)] = torch.tensor(seq), 1
            mask[i, : len(m)] = torch.tensor(m)
        model.train()
        logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1].float()
        logp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
        loss = -(torch.tensor(advantages).unsqueeze(-1) * logp * mask).sum() / mask.sum()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 25 == 0:
            recent = rewards[-25 * prompts :]
            print(f"step {step}: mean training reward {sum(recent) / len(recent):.3f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("passk")
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--k", type=int, default=8)
    w = sub.add_parser("files")
    w.add_argument("out", type=Path)
    w.add_argument("--n", type=int, default=30000)
    o = sub.add_parser("offline")
    o.add_argument("checkpoint")
    o.add_argument("--lr", type=float, required=True)
    o.add_argument("--steps", type=int, default=150)
    o.add_argument("--prompts", type=int, default=16)
    o.add_argument("--group", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.command == "passk":
        passk(args.checkpoints, args.k)
    elif args.command == "files":
        write_files(args.out, args.n)
    else:
        offline_grpo(args.checkpoint, args.lr, args.steps, args.prompts, args.group)


if __name__ == "__main__":
    main()
