"""A target served behind an OpenAI-compatible chat-completions API (e.g. ``vllm serve``).

Spec: ``openai:http://HOST:PORT/v1#MODEL``. Each image is sent inline as a PNG data URL,
one request per image, a few in flight at a time. ``OPENAI_API_KEY``, when set, is sent as
the bearer token.
"""

from __future__ import annotations

import base64
import io
import os
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import httpx

from vlmprobe.vlm import OPENAI_PREFIX, build_prompt_text, check_batch

if TYPE_CHECKING:
    from PIL import Image


def image_data_url(image: Image.Image) -> str:
    buf = io.BytesIO()
    (image if image.mode == "RGB" else image.convert("RGB")).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class OpenAICompatibleTarget:
    """Greedy chat completions (temperature 0) from ``base_url`` for ``model``."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        max_new_tokens: int = 16,
        concurrency: int = 8,
        timeout_s: float = 120.0,
    ) -> None:
        self.name = model
        self.model = model
        self.max_new_tokens = max_new_tokens
        self.concurrency = concurrency
        self.url = base_url.rstrip("/") + "/chat/completions"
        key = os.environ.get("OPENAI_API_KEY")
        self._client = httpx.Client(
            timeout=timeout_s,
            headers={"Authorization": f"Bearer {key}"} if key else None,
            transport=httpx.HTTPTransport(retries=2),  # connection failures only
        )

    @classmethod
    def from_spec(cls, spec: str, **kwargs) -> OpenAICompatibleTarget:
        base_url, _, model = spec.removeprefix(OPENAI_PREFIX).partition("#")
        if not base_url.startswith(("http://", "https://")) or not model:
            raise ValueError(
                f"Target spec {spec!r} is not of the form openai:http://HOST:PORT/v1#MODEL; "
                "give the server's base URL and, after '#', the model name it serves."
            )
        return cls(base_url, model, **kwargs)

    def _ask(self, image: Image.Image, question: str, choices: list[str] | None) -> str:
        content = [
            {"type": "image_url", "image_url": {"url": image_data_url(image)}},
            {"type": "text", "text": build_prompt_text(question, choices)},
        ]
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": self.max_new_tokens,
            "temperature": 0,
        }
        response = self._client.post(self.url, json=body)
        response.raise_for_status()
        try:
            text = response.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise ValueError(f"{self.url} answered without choices[0].message.content: {response.text[:200]}") from exc
        return (text or "").strip()

    def answer(
        self,
        images: list[Image.Image],
        questions: list[str],
        choices: list[list[str] | None],
    ) -> list[str]:
        """One answer per image, in order; the first failed request raises."""
        check_batch(images, questions, choices)
        if not images:
            return []
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(images))) as pool:
            return list(pool.map(self._ask, images, questions, choices))

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> OpenAICompatibleTarget:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
