"""A reward model served over HTTP (`rlstack serve-rm`), scoring an RL run's samples.

An RL stage whose `reward_model` is a URL (`http://host:port`) scores through this client
instead of a local reward-model actor. Samples go out as prompt text, response text (special
tokens kept by name), whether each response stopped at the end token, and the run's prompt
limit, so the server rebuilds exactly the token ids a local reward model would read (with the
character tokenizer). Requests carry at most `REQUEST_ITEMS` samples, each waits `timeout_s`,
and a request that cannot connect or times out is retried `retries` times with backoff.
Proxy settings of the environment are ignored: the URL is contacted directly.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from rlstack.errors import ConfigError, RLStackError

logger = logging.getLogger(__name__)

REQUEST_ITEMS = 256  # samples per POST /score
HEALTH_TIMEOUT_S = 10.0
BACKOFF_S = 0.5  # first retry delay; doubles on each further retry


def is_reward_url(value: str | None) -> bool:
    """Whether a `reward_model` config value names a server rather than a checkpoint."""
    return isinstance(value, str) and value.startswith(("http://", "https://"))


class RemoteRewardModel:
    """Client of one reward-model server.

    Args:
        url: the server's base URL, `http://host:port`.
        timeout_s: seconds one request may take before it counts as failed.
        retries: further attempts after a connection error or a timeout.
        key: the config key that named the URL, used in error messages.
    """

    def __init__(self, url: str, timeout_s: float = 60.0, retries: int = 3, key: str = "") -> None:
        self.url = url.rstrip("/")
        self.timeout_s, self.retries = timeout_s, retries
        self.where = f"{key}: " if key else ""
        parts = urlsplit(self.url)
        try:
            parts.port  # noqa: B018 - raises ValueError on a port that is not a number
        except ValueError:
            parts = None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"{self.where}{url!r} is not a reward-model server URL")
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    # ------------------------------------------------------------ requests
    def _request(self, path: str, body: dict | None, timeout_s: float) -> dict[str, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.url + path, data=data, headers={"Content-Type": "application/json"}
        )
        with self._opener.open(request, timeout=timeout_s) as response:
            return json.loads(response.read())

    def check(self) -> dict[str, Any]:
        """GET /health once; a server that does not answer as ours is a ConfigError."""
        try:
            info = self._request("/health", None, min(self.timeout_s, HEALTH_TIMEOUT_S))
        except urllib.error.HTTPError as err:
            reason = f"HTTP {err.code}"
        except (OSError, ValueError) as err:
            reason = str(getattr(err, "reason", None) or err) or type(err).__name__
        else:
            if isinstance(info, dict) and info.get("status") == "ok":
                logger.info("reward-model server %s serves %s", self.url, info.get("checkpoint"))
                return info
            reason = "not an rlstack reward-model server"
        raise ConfigError(
            f"{self.where}the reward-model server at {self.url} does not answer /health "
            f"({reason}); start it with `rlstack serve-rm CHECKPOINT`"
        )

    def _post_score(self, body: dict[str, Any]) -> list[float]:
        for attempt in range(self.retries + 1):
            try:
                out = self._request("/score", body, self.timeout_s)
                break
            except urllib.error.HTTPError as err:
                detail = err.read().decode(errors="replace")[:500]
                raise RLStackError(
                    f"{self.where}the reward-model server at {self.url} refused a request "
                    f"(HTTP {err.code}: {detail})"
                ) from None
            except (OSError, ValueError) as err:  # refused, reset, timed out, garbled
                reason = str(getattr(err, "reason", None) or err) or type(err).__name__
                if attempt == self.retries:
                    raise RLStackError(
                        f"{self.where}the reward-model server at {self.url} failed "
                        f"{self.retries + 1} time(s); last error: {reason}"
                    ) from None
                delay = BACKOFF_S * 2**attempt
                logger.warning("reward-model request failed (%s); retrying in %.1fs", reason, delay)
                time.sleep(delay)
        scores = out.get("scores") if isinstance(out, dict) else None
        n = len(body["prompts"])
        if not isinstance(scores, list) or len(scores) != n or None in scores:
            raise RLStackError(
                f"{self.where}the reward-model server at {self.url} returned no valid score "
                f"for some of {n} samples"
            )
        return [float(s) for s in scores]

    # ------------------------------------------------------------- scoring
    def score(
        self,
        prompts: list[str],
        responses: list[str],
        ended: list[bool] | None = None,
        max_prompt_tokens: int | None = None,
    ) -> list[float]:
        """Scores of prompt/response text pairs, `REQUEST_ITEMS` per request."""
        scores: list[float] = []
        for a in range(0, len(prompts), REQUEST_ITEMS):
            body: dict[str, Any] = {
                "prompts": prompts[a : a + REQUEST_ITEMS],
                "responses": responses[a : a + REQUEST_ITEMS],
            }
            if ended is not None:
                body["ended"] = ended[a : a + REQUEST_ITEMS]
            if max_prompt_tokens is not None:
                body["max_prompt_tokens"] = max_prompt_tokens
            scores += self._post_score(body)
        return scores

    def start(self, timeout_s: float = 0.0) -> RemoteRewardModel:
        """Nothing to start: the server runs on its own (checked when this client was made)."""
        return self

    def shutdown(self) -> None:
        """Nothing to stop: the server outlives the run."""
