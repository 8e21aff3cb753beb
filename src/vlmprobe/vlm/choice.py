"""Multiple-choice answers from one forward pass: option log-likelihoods instead of ``generate``.

For a batch of rows that have ``choices``, every row's prompt (image tokens included) is laid
out once, left padded so that all prompts end at the same column, and the row's options are
packed after it, one after the other (all but their last token, which nothing reads). A 4D attention mask lets each option's tokens see the
prompt and the earlier tokens of the same option only, and each option's position ids restart
where the prompt ends, so one forward pass gives every option the log-probabilities it would
get alone after the prompt — the prompt and its image are computed once, not once per option.

Which option is picked follows greedy decoding restricted to the options (:func:`pick_option`):
walk the options' token trie, at each step keep the options whose next token has the highest
log-probability; an option that ends where a longer one goes on wins unless the longer one's
next token is the model's argmax there. So when ``generate`` would write an option out token by
token, the scorer picks that option.

Torch is imported only by :func:`attention_mask`; the layout and the pick are plain Python.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

PAD_SEGMENT = -1
PROMPT_SEGMENT = 0


def option_token_ids(prompt_ids: list[int], full_ids: list[list[int]]) -> list[list[int]] | None:
    """Each option's tokens as a continuation of the prompt, or None when one does not continue it.

    ``full_ids[k]`` is the tokenization of ``prompt + separator + option k``. The option's
    tokens are what follows the prompt's tokens; if a merge across the boundary changed the
    prompt's own tokens, scoring would not match generation, so the row is left to ``generate``.
    """
    n = len(prompt_ids)
    out = []
    for ids in full_ids:
        if ids[:n] != prompt_ids or len(ids) == n:
            return None
        out.append(ids[n:])
    return out


@dataclass
class PackedChoices:
    """One forward pass's inputs for ``rows`` multiple-choice rows (plain lists; see :func:`pack`).

    ``score_row[i]``, ``score_col[i]``: where the logits that predict option token ``i`` are
    (the prompt's last column for an option's first token, else the option's previous token);
    ``score_token[i]``: that token. ``spans[r][k]`` = (start, stop) of row r's option k in the
    flat ``score_*`` lists.
    """

    input_ids: list[list[int]]
    position_ids: list[list[int]]
    segments: list[list[int]]
    score_row: list[int] = field(default_factory=list)
    score_col: list[int] = field(default_factory=list)
    score_token: list[int] = field(default_factory=list)
    spans: list[list[tuple[int, int]]] = field(default_factory=list)
    options: list[list[list[int]]] = field(default_factory=list)


def pack(prompts: list[list[int]], options: list[list[list[int]]], pad_id: int) -> PackedChoices:
    """Lay out each row as ``[left pad][prompt][option 1][option 2]…[right pad]``.

    Only the tokens that predict a later one are laid out: an option's last token is scored
    from the column before it and is never an input, so a one-token option adds no column at
    all — it is scored from the prompt's last column. Segments: -1 padding, 0 prompt, k+1
    option k. Prompt positions count from 0 at the row's first real token; option k's tokens
    take positions ``len(prompt), len(prompt)+1, …``.
    """
    if len(prompts) != len(options):
        raise ValueError("pack() needs one options list per prompt")
    prompt_width = max((len(p) for p in prompts), default=0)
    width = prompt_width + max((sum(max(len(o) - 1, 0) for o in opts) for opts in options), default=0)
    packed = PackedChoices([], [], [])
    for r, (prompt, opts) in enumerate(zip(prompts, options)):
        lead = prompt_width - len(prompt)
        ids = [pad_id] * lead + list(prompt)
        pos = [0] * lead + list(range(len(prompt)))
        seg = [PAD_SEGMENT] * lead + [PROMPT_SEGMENT] * len(prompt)
        spans = []
        for k, tokens in enumerate(opts):
            start = len(ids)
            first = len(packed.score_row)
            for j, tok in enumerate(tokens):
                packed.score_row.append(r)
                packed.score_col.append(prompt_width - 1 if j == 0 else start + j - 1)
                packed.score_token.append(tok)
            inputs = tokens[:-1]
            ids.extend(inputs)
            pos.extend(range(len(prompt), len(prompt) + len(inputs)))
            seg.extend([k + 1] * len(inputs))
            spans.append((first, len(packed.score_row)))
        tail = width - len(ids)
        packed.input_ids.append(ids + [pad_id] * tail)
        packed.position_ids.append(pos + [0] * tail)
        packed.segments.append(seg + [PAD_SEGMENT] * tail)
        packed.spans.append(spans)
        packed.options.append([list(t) for t in opts])
    return packed


def attention_mask(segments: torch.Tensor, *, additive_dtype: torch.dtype | None = None) -> torch.Tensor:
    """The (batch, 1, width, width) mask for :func:`pack`'s layout, built on ``segments``' device.

    A token sees earlier-or-equal columns that are prompt, or its own option; padding sees only
    itself (a row with nothing to attend to would give NaN in SDPA). Boolean (True = attend) for
    SDPA; with ``additive_dtype``, 0 / -inf-like floats for eager attention.
    """
    import torch

    width = segments.shape[1]
    col = torch.arange(width, device=segments.device)
    causal = col[None, :] <= col[:, None]  # [query, key]
    valid = segments >= 0
    seg_q, seg_k = segments[:, :, None], segments[:, None, :]
    allowed = causal[None] & valid[:, :, None] & valid[:, None, :] & ((seg_k == PROMPT_SEGMENT) | (seg_k == seg_q))
    allowed |= torch.eye(width, dtype=torch.bool, device=segments.device)[None]
    allowed = allowed[:, None]
    if additive_dtype is None:
        return allowed
    zero = torch.zeros((), dtype=additive_dtype, device=segments.device)
    return torch.where(allowed, zero, torch.finfo(additive_dtype).min)


def pick_option(options: list[list[int]], logprobs: list[list[float]], is_top: list[list[bool]]) -> int:
    """The option greedy decoding restricted to ``options`` would write (index into ``options``).

    ``logprobs[k][j]``: log-probability of option k's token j after the prompt and the option's
    earlier tokens; ``is_top[k][j]``: whether that token is the model's argmax there. Options
    sharing a prefix share those log-probabilities, so the walk compares like with like.
    """
    candidates = list(range(len(options)))
    pos = 0
    while len(candidates) > 1:
        ended = [k for k in candidates if len(options[k]) == pos]
        going = [k for k in candidates if len(options[k]) > pos]
        if not going:
            return ended[0]  # identical token sequences: the first one listed
        best = max(going, key=lambda k: logprobs[k][pos])
        if ended and not is_top[best][pos]:
            return ended[0]  # greedy stops here rather than write the longer option's next token
        token = options[best][pos]
        candidates = [k for k in going if options[k][pos] == token]
        pos += 1
    return candidates[0]
