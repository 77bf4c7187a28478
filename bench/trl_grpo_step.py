"""TRL's in-process GRPOTrainer on the workload of bench/grpo_step.py, measured on this machine.

    make bench-trl        # installs TRL 1.16 into bench/work/trl_pkgs (not the project's
                          # environment), then runs this; writes bench/results/trl_grpo_step.json

The baseline bench/grpo_step.py compares rlstack with. Same model (the ~1M-parameter Qwen3-MoE of
grpo_step.py, randomly initialised, character tokenizer), 8 prompts x 8 samples x 32 response
tokens per step (generation forced to 32 tokens with `min_new_tokens`), the same synthetic
arithmetic prompts and a reward of 1 for the right number, one optimizer step per generation, HF
`generate`, one process with 2 torch threads; two variants: no KL (beta 0) and KL 0.04 to a
reference model. 60 steps each; the step time is the wall time between consecutive
`on_step_end` callbacks, median over steps 6-60, as in grpo_step.py.
Running both the same day on the same machine keeps the comparison fair: this machine's speed
drifts by 20% or more from one session to the next.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

WORK = REPO / "bench" / "work" / "trl_grpo_step"
RESULTS = REPO / "bench" / "results" / "trl_grpo_step.json"
STEPS = 60


def reward_right_number(completions, reference, **_):
    from rlstack.verifiers.numeric import numeric_match

    return [numeric_match("", c, r) for c, r in zip(completions, reference)]


def run(beta: float) -> dict:
    import torch

    torch.set_num_threads(2)
    import trl
    from datasets import Dataset
    from grpo_step import MODEL, summarise
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rlstack.data.synthetic import synthetic_records
    from rlstack.model.build import count_parameters, new_causal_lm, save_model
    from rlstack.model.tokenizer import format_prompt

    model, tokenizer = new_causal_lm(MODEL, seed=0)
    rows = synthetic_records("arithmetic", 2000, seed=0)
    data = Dataset.from_list(
        [
            {"prompt": format_prompt(tokenizer, r["prompt"]), "reference": r["reference"]}
            for r in rows
        ]
    )

    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            stamps.append(time.time())

    shutil.rmtree(WORK, ignore_errors=True)
    # From a directory, as TRL builds its reference model from the policy's path.
    save_model(model, tokenizer, WORK / "init")
    args = GRPOConfig(
        output_dir=str(WORK / "out"),
        max_steps=STEPS,
        per_device_train_batch_size=64,
        num_generations=8,
        max_completion_length=32,
        generation_kwargs={"min_new_tokens": 32},
        beta=beta,
        model_init_kwargs={"dtype": "float32"},
        learning_rate=5e-5,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        bf16=False,
        seed=0,
        dataloader_num_workers=0,
    )
    trainer = GRPOTrainer(
        model=str(WORK / "init"),
        reward_funcs=reward_right_number,
        args=args,
        train_dataset=data,
        processing_class=tokenizer,
        callbacks=[Clock()],
    )
    t0 = time.time()
    trainer.train()
    times = [b - a for a, b in zip(stamps, stamps[1:])][5:]
    return {
        **summarise(times, time.time() - t0),
        "model_parameters": count_parameters(model),
        "trl": trl.__version__,
    }


VARIANTS = {"no KL (beta 0)": 0.0, "KL 0.04 (beta 0.04)": 0.04}


def main(argv: list[str]) -> int:
    from grpo_step import commit

    if argv[:1] == ["--one"]:  # one variant, its figures as one JSON line (bench/grpo_vs_trl.py)
        print(json.dumps(run(VARIANTS[argv[1]])))
        return 0
    results = {}
    for name, beta in VARIANTS.items():
        results[name] = run(beta)
        print(f"{name}: {results[name]}")
    out = {
        "workload": "Qwen3-MoE ~1M params, 8 prompts x 8 samples x 32 tokens, 2 threads",
        "variant": "TRL GRPOTrainer, HF generate, one process",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "commit": commit(),
        "results": results,
    }
    print(json.dumps(out, indent=2))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
