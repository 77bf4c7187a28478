"""`rlstack serve-rm`: a trained reward model scoring prompt/response texts over HTTP.

    rlstack serve-rm runs/<time>/checkpoints/reward_model --port 8000 --batch-size 32

    POST /score  {"prompts": ["2+2"], "responses": ["4"]}  ->  {"scores": [0.83]}
    GET  /health                                           ->  {"status": "ok", ...}

The checkpoint is a directory the reward_model stage wrote (weights, config and tokenizer).
Texts are tokenized as the reward model was trained (`rlstack.stages.batches.reward_sequence`:
the chat-formatted prompt, the response, the end token); the optional fields `ended` and
`max_prompt_tokens` let an RL run reproduce its own sequences exactly. A request is scored in
batches of `--batch-size` sequences, one batch at a time (concurrent requests queue for the
model; they are not merged into shared batches). See docs/reward-server.md.
"""

import logging
import math
import socket
import threading
import time
from pathlib import Path
from typing import Any

import torch

from rlstack.errors import ConfigError, RLStackError

logger = logging.getLogger(__name__)

MAX_ITEMS = 4096  # prompt/response pairs in one request; more is refused with 413


def sequence_scores(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor):
    """The scalar head at each sequence's last real token, `[batch]` (right padding)."""
    base = getattr(model, model.base_model_prefix)
    hidden = base(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    values = model.score(hidden).squeeze(-1).float()
    last = attention_mask.sum(dim=1) - 1
    return values.gather(1, last.unsqueeze(1)).squeeze(1)


class RewardModel:
    """A frozen reward model and its tokenizer, scoring texts in batches (thread-safe)."""

    def __init__(self, checkpoint: str, batch_size: int = 32) -> None:
        from rlstack.model.build import is_scalar_checkpoint, load_scalar_model, load_tokenizer

        path = Path(checkpoint).expanduser()
        if not (path / "config.json").is_file():
            what = "does not exist" if not path.exists() else "has no config.json"
            raise ConfigError(f"reward-model checkpoint {checkpoint}: {what}")
        try:
            scalar = is_scalar_checkpoint(path)
        except ValueError as err:
            msg = f"reward-model checkpoint {checkpoint}: bad config.json ({err})"
            raise ConfigError(msg) from None
        if not scalar:
            raise ConfigError(
                f"reward-model checkpoint {checkpoint}: not a reward model (a causal LM or "
                "other model); serve a directory the reward_model stage wrote"
            )
        try:
            self.tokenizer = load_tokenizer(path)
            self.model = load_scalar_model(path).eval()
        except Exception as err:  # a user's directory: any load failure is their input's
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConfigError(
                f"reward-model checkpoint {checkpoint}: cannot load ({first})"
            ) from None
        self.checkpoint = str(path.resolve())
        self.batch_size = batch_size
        positions = getattr(self.model.config, "max_position_embeddings", None) or 10**9
        self.max_len = int(min(self.tokenizer.model_max_length, positions))
        self._lock = threading.Lock()

    @torch.no_grad()
    def score(
        self,
        prompts: list[str],
        responses: list[str],
        ended: list[bool] | None = None,
        max_prompt_tokens: int | None = None,
    ) -> list[float]:
        """One score per prompt/response pair, computed `batch_size` sequences at a time."""
        from rlstack.stages.batches import pad, reward_sequence

        ended = ended if ended is not None else [True] * len(prompts)
        seqs = [
            reward_sequence(self.tokenizer, p, r, self.max_len, max_prompt_tokens, e)
            for p, r, e in zip(prompts, responses, ended)
        ]
        scores: list[float] = []
        for start in range(0, len(seqs), self.batch_size):
            ids, attn = pad(seqs[start : start + self.batch_size], self.tokenizer.pad_token_id)
            with self._lock:
                scores += sequence_scores(self.model, ids, attn).tolist()
        return scores


def create_app(rm: RewardModel) -> Any:
    """The FastAPI application: POST /score and GET /health."""
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt
    from starlette.exceptions import HTTPException as AnyHTTPException

    class ScoreRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")

        prompts: list[str]
        responses: list[str]
        ended: list[StrictBool] | None = None  # per pair: the response stopped at the end token
        max_prompt_tokens: StrictInt | None = Field(default=None, ge=1)

    app = FastAPI(title="rlstack reward model", docs_url=None, redoc_url=None)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(_: Request, err: RequestValidationError) -> JSONResponse:
        problems = [
            f"{'.'.join(str(part) for part in e.get('loc', ())[1:]) or 'body'}: {e.get('msg')}"
            for e in err.errors()
        ]
        return JSONResponse(status_code=422, content={"error": "; ".join(problems)})

    @app.exception_handler(AnyHTTPException)  # also the router's own 404 and 405
    async def http_error(_: Request, err: AnyHTTPException) -> JSONResponse:
        return JSONResponse(status_code=err.status_code, content={"error": err.detail})

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "checkpoint": rm.checkpoint,
            "max_len": rm.max_len,
            "batch_size": rm.batch_size,
            "max_items": MAX_ITEMS,
        }

    @app.post("/score")
    def score(body: ScoreRequest) -> dict[str, list[float]]:
        n = len(body.prompts)
        if len(body.responses) != n or (body.ended is not None and len(body.ended) != n):
            raise HTTPException(
                422, "prompts, responses (and ended, if given) must have the same length"
            )
        if n > MAX_ITEMS:
            raise HTTPException(413, f"{n} pairs in one request; at most {MAX_ITEMS}")
        t0 = time.time()
        scores = rm.score(body.prompts, body.responses, body.ended, body.max_prompt_tokens)
        if n:
            logger.info("scored %d pairs in %.3fs", n, time.time() - t0)
        return {"scores": [s if math.isfinite(s) else None for s in scores]}

    return app


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket; an address that cannot be bound is a one-line error."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError as err:
        sock.close()
        raise RLStackError(f"serve-rm: cannot listen on {host}:{port} ({err.strerror})") from None
    return sock


def serve(checkpoint: str, host: str, port: int, batch_size: int, threads: int) -> None:
    """Load the checkpoint, then serve until interrupted (SIGINT / SIGTERM)."""
    import uvicorn
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if batch_size < 1 or threads < 1:
        raise ConfigError("serve-rm: --batch-size and --threads must be at least 1")
    torch.set_num_threads(threads)
    t0 = time.time()
    rm = RewardModel(checkpoint, batch_size)
    logger.info(
        "loaded reward model %s in %.1fs (max_len %d)", rm.checkpoint, time.time() - t0, rm.max_len
    )
    sock = listen(host, port)
    bound = sock.getsockname()[1]
    if host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("listening on %s: the server has no authentication", host)
    logger.info("serving on http://%s:%d (POST /score, GET /health)", host, bound)
    config = uvicorn.Config(
        create_app(rm), log_level="warning", access_log=False, timeout_graceful_shutdown=5
    )
    uvicorn.Server(config).run(sockets=[sock])
