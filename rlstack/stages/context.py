"""What every stage receives: the config, the run directory, metrics and the models so far."""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rlstack.config import Config, DataConfig, OptimConfig
from rlstack.data import load_rows, split_rows
from rlstack.errors import ConfigError, DataError, PluginError
from rlstack.learner.group import LearnerGroup
from rlstack.learner.worker import ModelSpec
from rlstack.metrics import MetricsWriter
from rlstack.model.build import check_checkpoint_files

logger = logging.getLogger(__name__)

EXAMPLE_CHARACTERS = 5  # unknown characters a warning shows


def check_checkpoint(
    key: str, path: str | None, scalar: bool | None = None, max_seq_len: int | None = None
) -> None:
    """A local checkpoint must be a directory with a config.json; other names go to the hub.

    With `scalar` True (a reward model) or False (a causal LM), a local checkpoint of the other
    kind is refused too: a policy read as a reward model scores everything alike, and a reward
    model read as a policy starts with a random output layer. With `max_seq_len`, a local
    checkpoint whose positions are fewer (`max_position_embeddings`) is refused: the rollout
    engine cannot serve sequences longer than the model was built for.
    """
    if path is None or path == "random":
        return
    local = Path(path).expanduser()
    looks_local = path.startswith(("/", ".", "~")) or local.exists()
    if looks_local and not (local / "config.json").is_file():
        what = (
            "is not a checkpoint directory (no config.json)"
            if local.exists()
            else ("does not exist")
        )
        raise ConfigError(f"{key}: {path} {what}")
    if looks_local and scalar is not None:
        from rlstack.model.build import is_scalar_checkpoint

        try:
            is_scalar = is_scalar_checkpoint(local)
        except ValueError as err:
            raise ConfigError(f"{key}: {path} has a bad config.json ({err})") from None
        if is_scalar != scalar:
            what = "a reward model (scalar head)" if is_scalar else "a causal language model"
            wanted = "a reward model" if scalar else "a causal language model (a policy)"
            raise ConfigError(f"{key}: {path} is {what}; this needs {wanted}")
    if looks_local and max_seq_len is not None:
        positions = _max_positions(local / "config.json")
        if positions is not None and positions < max_seq_len:
            raise ConfigError(
                f"{key}: {path} holds at most {positions} positions (max_position_embeddings) "
                f"but model.max_seq_len is {max_seq_len}; set model.max_seq_len={positions} "
                f"or less"
            )
    if looks_local:
        check_checkpoint_files(key, local, scalar)


def _max_positions(config_json: Path) -> int | None:
    try:
        config = json.loads(config_json.read_text())
    except (OSError, ValueError):
        return None
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    value = config.get("max_position_embeddings", text.get("max_position_embeddings"))
    return value if isinstance(value, int) else None


# Row fields each stage reads; SFT also takes preference rows and learns their chosen reply.
STAGE_FIELDS = {
    "sft": [("prompt", "response"), ("prompt", "chosen")],
    "reward_model": [("prompt", "chosen", "rejected")],
    "dpo": [("prompt", "chosen", "rejected")],
    "ppo": [("prompt",)],
    "grpo": [("prompt",)],
}


def _check_fields(stage: str, fmt: str, rows: list, verifier: bool = False) -> None:
    """A ConfigError naming the stage when its data format lacks the fields the stage reads."""
    if stage == "pretrain":
        if rows and not isinstance(rows[0], str):
            raise ConfigError(f"{stage}.data.format: {fmt} gives records; pretraining needs text")
        return
    needs = [(*f, "reference") for f in STAGE_FIELDS[stage]] if verifier else STAGE_FIELDS[stage]
    have = set(rows[0]) if rows and isinstance(rows[0], dict) else set()
    if rows and not any(set(fields) <= have for fields in needs):
        wanted = " or ".join("{" + ", ".join(f) + "}" for f in needs)
        raise ConfigError(
            f"{stage}.data.format: {fmt} rows have fields {{{', '.join(sorted(have))}}}; "
            f"{stage} needs {wanted}"
        )


def _read(key: str, source: str, fmt: str, **options: Any) -> list:
    """`load_rows`, a DataError naming the config key of the source: `sft.data.train: ...`."""
    try:
        return load_rows(source, fmt, **options)
    except DataError as err:
        raise DataError(f"{key}: {err}") from None


def _drop_seen_prompts(train: list, held_out: list, where: str) -> list:
    """Held-out rows whose prompt is not a training prompt of this or an earlier stage (rows
    without prompts are all kept)."""
    seen = {r["prompt"] for r in train if isinstance(r, dict) and "prompt" in r}
    kept = [r for r in held_out if not (isinstance(r, dict) and r.get("prompt") in seen)]
    if len(kept) < len(held_out):
        logger.info(
            "%s: %d of %d held-out rows dropped: their prompt is also a training prompt",
            where,
            len(held_out) - len(kept),
            len(held_out),
        )
    return kept


def _reward_model_use(section: Any) -> str:
    if section.reward_source == "reward_model":
        return "reward_source is reward_model"
    return f"reward_model_weight is {section.reward_model_weight:g}"


@dataclass
class StageContext:
    cfg: Config
    run_dir: Path
    metrics: MetricsWriter | None
    env_vars: dict[str, str]
    policy_path: str | None = None  # latest causal-LM checkpoint (None: build from scratch)
    reward_model_path: str | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    data_cache: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # stage -> (train,
    # held-out) rows, and data derived from them (pretraining's token streams)
    resume: bool = False  # restore the stage in progress from its newest state (rlstack.driver)
    step: int = 0  # the step the running stage is at (0: starting), for error messages

    def tokenizer(self):
        """The shared tokenizer: the current checkpoint's, or the built-in character one."""
        return self._tokenizer_at(self.policy_path)

    def _tokenizer_at(self, path: str | None):
        """The tokenizer of the checkpoint at `path`; the character one when `path` is None."""
        from rlstack.model.build import load_tokenizer
        from rlstack.model.tokenizer import build_tokenizer

        if path is None:
            return build_tokenizer(self.cfg.model.max_seq_len)
        return load_tokenizer(path)

    def checkpoint_dir(self, stage: str) -> str:
        return str(self.run_dir / "checkpoints" / stage)

    def load_data(self, stage: str) -> tuple[list, list]:
        """Train and held-out rows of a stage's data set (loaded once, then cached)."""
        if stage in self.data_cache:
            return self.data_cache[stage]
        data: DataConfig = getattr(self.cfg, stage).data
        t0 = time.time()
        opts = dict(data.options)
        try:
            rows = _read(
                f"{stage}.data.train",
                data.train,
                data.format,
                split=data.split,
                max_rows=data.max_rows,
                subset=data.subset,
                **opts,
            )
            if data.eval is not None:
                train = rows
                subset = data.eval_subset
                if subset is None and data.eval == data.train:
                    subset = data.subset
                held_out = _read(
                    f"{stage}.data.eval",
                    data.eval,
                    data.format,
                    split=data.eval_split,
                    subset=subset,
                    **opts,
                )
                if data.drop_seen_prompts:
                    seen = list(train)
                    for earlier in self.cfg.stages[: self.cfg.stages.index(stage)]:
                        if earlier != "pretrain":
                            seen += self.load_data(earlier)[0]
                    held_out = _drop_seen_prompts(seen, held_out, f"{stage}.data.eval")
            elif stage == "pretrain" and len(rows) == 1:
                train, held_out = rows, []  # one document: pretraining holds out its tail
            else:
                train, held_out = split_rows(rows, data.eval_fraction, self.cfg.seed)
        except ConfigError as err:
            raise ConfigError(f"{stage}.data: {err}") from None
        verifier = getattr(getattr(self.cfg, stage), "reward_source", None) == "verifier"
        _check_fields(stage, data.format, train + held_out, verifier)
        if data.max_eval_rows is not None and stage != "pretrain":
            held_out = held_out[: data.max_eval_rows]
        logger.info(
            "%s: %d train and %d held-out rows from %s (%.1fs)",
            stage,
            len(train),
            len(held_out),
            data.train,
            time.time() - t0,
        )
        self.data_cache[stage] = (train, held_out)
        return train, held_out

    def preflight(self) -> None:
        """Load every stage's data and plug-ins before any actor starts, so that bad input
        fails in seconds with one clear error instead of after the earlier stages."""
        from rlstack.scorers.reward_http import RemoteRewardModel, is_reward_url
        from rlstack.verifiers import check_options, load_verifier, parse_verifier_entries

        max_len = self.cfg.model.max_seq_len
        check_checkpoint("model.init", self.cfg.model.init, scalar=False, max_seq_len=max_len)
        have_reward_model = False
        for stage in self.cfg.stages:
            section = getattr(self.cfg, stage)
            have_reward_model = have_reward_model or stage == "reward_model"
            source = getattr(section, "reward_source", None)
            if source == "reward_model" or (source and section.reward_model_weight != 0):
                if is_reward_url(section.reward_model):
                    key = f"{stage}.reward_model"
                    RemoteRewardModel(
                        section.reward_model, section.reward_timeout_s, key=key
                    ).check()
                else:
                    check_checkpoint(f"{stage}.reward_model", section.reward_model, True, max_len)
                if section.reward_model is None and not have_reward_model:
                    raise ConfigError(
                        f"{stage}: {_reward_model_use(section)} but no reward model comes "
                        f"before it; add the reward_model stage earlier in `stages` or set "
                        f"{stage}.reward_model to a reward-model checkpoint"
                    )
        vocabulary = self._start_tokenizer()
        for stage in self.cfg.stages:
            self.load_data(stage)
            if vocabulary is not None:
                self._warn_unknown_characters(stage, vocabulary)
            if stage == "pretrain":
                from rlstack.stages.pretrain import streams

                if self.policy_path is None and self.cfg.model.init != "random":
                    self.policy_path = self.cfg.model.init  # its tokenizer counts the tokens
                streams(self)  # enough text for one training window
            section = getattr(self.cfg, stage)
            if getattr(section, "reward_source", None) == "verifier":
                key = f"{stage}.verifier"
                for i, entry in enumerate(parse_verifier_entries(section.verifier, key)):
                    try:
                        check_options(load_verifier(entry.spec), entry.args, entry.spec)
                    except PluginError as err:
                        at = key if isinstance(section.verifier, str) else f"{key}[{i}]"
                        raise PluginError(f"{at}: {err}") from None
                self._check_verifier_cpus(stage, section)
        if self.cfg.model.init == "random":
            for stage in self.cfg.stages:
                if stage in ("pretrain", "sft"):  # these can start from random weights
                    break
                raise ConfigError(
                    f"{stage}: needs a base model, but it comes before any pretrain or sft stage "
                    "and model.init is random; add one of those stages before it or set "
                    "model.init to a checkpoint"
                )

    def _start_tokenizer(self):
        """The tokenizer the first stage reads its data with: the character one, or a local
        model.init's; None for a hub model (not fetched before the run starts)."""
        init = self.cfg.model.init
        if init == "random":
            return self._tokenizer_at(None)
        return self._tokenizer_at(init) if Path(init).expanduser().is_dir() else None

    def _warn_unknown_characters(self, stage: str, tokenizer: Any) -> None:
        """One warning per stage data set whose characters the tokenizer reads as unknown (the
        character tokenizer knows printable ASCII only); the run goes on."""
        from rlstack.stages.batches import unknown_characters

        train, held_out = self.load_data(stage)
        fields = tuple(dict.fromkeys(f for group in STAGE_FIELDS.get(stage, []) for f in group))
        affected, counts = unknown_characters(tokenizer, train + held_out, fields)
        if not affected:
            return
        data = getattr(self.cfg, stage).data
        source = f"{stage}.data.train={data.train}"
        if data.eval is not None:
            source += f" and {stage}.data.eval={data.eval}"
        examples = ", ".join(
            f"{c!r} (U+{ord(c):04X}) x{n}" for c, n in counts.most_common(EXAMPLE_CHARACTERS)
        )
        others = len(counts) - EXAMPLE_CHARACTERS
        more = f" and {others} more" if others > 0 else ""
        logger.warning(
            "%s: %d of %d rows hold %d characters outside the tokenizer's vocabulary, read as "
            "%s: %s%s",
            source,
            affected,
            len(train) + len(held_out),
            sum(counts.values()),
            tokenizer.unk_token,
            examples,
            more,
        )

    def _check_verifier_cpus(self, stage: str, section: Any) -> None:
        """A verifier pool larger than a local Ray's CPUs would wait for ray.start_timeout_s."""
        if self.cfg.ray.address is not None:
            return  # a cluster's size is known only once connected (and may grow)
        cpus = self.cfg.ray.num_cpus or os.cpu_count() or 1
        need = section.verifier_workers * section.verifier_cpus_per_worker
        if need > cpus + 1e-9:
            raise ConfigError(
                f"{stage}.verifier_workers: {section.verifier_workers} workers x "
                f"{section.verifier_cpus_per_worker:g} CPUs ({stage}.verifier_cpus_per_worker) "
                f"= {need:g} CPUs, more than the local Ray's {cpus:g}; lower either"
            )

    def learner(
        self,
        name: str,
        kind: str,
        init_path: str | None,
        optim: OptimConfig | None,
        total_steps: int,
        samples_per_step: int,
        start: bool = True,
    ) -> LearnerGroup:
        """A learner group (trainable when `optim` is given, frozen otherwise).

        With `start=False` the actors load in the background; call `.start()` before use.
        """
        lc = self.cfg.learner
        world = lc.num_workers if optim is not None else 1
        per_rank = max(1, samples_per_step // world)
        micro = min(lc.micro_batch_size, per_rank)
        spec = ModelSpec(
            kind=kind,
            init_path=init_path,
            model_cfg=asdict(self.cfg.model),
            trainable=optim is not None,
            optim=asdict(optim) if optim is not None else {},
            total_steps=total_steps,
            zero_stage=lc.zero_stage,
            bf16=lc.bf16,
            micro_batch_size=micro,
            grad_accum=max(1, -(-per_rank // micro)),
            threads=lc.threads,
            seed=self.cfg.seed,
        )
        group = LearnerGroup(
            name,
            spec,
            num_workers=world,
            cpus_per_worker=lc.cpus_per_worker if optim is not None else lc.cpus_per_frozen_model,
            gpus_per_worker=lc.gpus_per_worker,
            env_vars=self.env_vars,
        )
        return group.start(self.cfg.ray.start_timeout_s) if start else group

    def log(self, stage: str, step: int, values: dict[str, Any]) -> None:
        row = self.metrics.log(stage, step, values)
        shown = {k: v for k, v in row.items() if k not in ("stage", "step", "time")}
        text = " ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items()
        )
        logger.info("[%s %d] %s", stage, step, text)
