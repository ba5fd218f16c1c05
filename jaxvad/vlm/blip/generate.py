"""Greedy and beam search for `CaptionModel`, token for token as transformers 5's
`BlipForConditionalGeneration.generate(pixel_values, max_new_tokens=N[, num_beams=K])`.

Both run inside one jitted function (`generate`, a pure function of `(graphdef, state)`): the
vision tower once, then a `lax.while_loop` over decoder steps with a static key/value cache of N
positions (the image's cross-attention keys/values computed once), so one compile serves a
(batch size B, beams K, N) triple. Beams are flattened into the decoder batch (row b·K + k is beam
k of image b); the cross-attention reads each image's keys/values once for all its beams.

What is matched (HF's generate with BLIP's defaults: no generation_config.json in the BLIP
checkpoints, so `GenerationConfig` defaults apply; a folder's generation_config.json is ignored):

* Prompt: the text config's `bos_token_id` (BLIP's `[DEC]`), alone, at position 0; it is the first
  token of the output, as in HF.
* Stopping: a sequence ends when it emits `sep_token_id` (BLIP passes `eos_token_id=sep`; the
  text config's own `eos_token_id` is not used) or after N new tokens (`max_new_tokens`).
* Greedy (K = 1): argmax (first index on ties) of the logits (no logits processors: min_length 0,
  no repetition penalty); a finished sequence continues with `pad_token_id` (sep when None), the
  loop stops when every sequence of the batch has ended, so the output has 1 + the number of
  steps run columns.
* Beam search (K > 1): HF's vectorised beam search (`GenerationMixin._beam_search`, v5): per step
  the top 2·K continuations of the summed log-softmax scores over K·V candidates; those ending in
  sep (or at N tokens) among the top K enter the finished pool with score `sum_logprobs /
  generated_length ** length_penalty` (default 1.0), the best K others continue. `early_stopping`
  (default False) as HF: False stops a batch item once it holds K finished hypotheses and its
  best running beam, scored at the current length, cannot beat the worst of them; True once K
  hypotheses are finished;
  "never" scores running beams at the maximal length when length_penalty > 0. The first step
  starts from beam 0 only (other beams at -1e9). The best finished hypothesis is returned;
  positions after its end hold `pad_token_id`, or sep when the pad id is 0 or None (HF's
  `pad_token_id or eos_token_id[0]`). The output is cropped to the longest returned hypothesis
  of the batch, as HF's.

Results are `(tokens [B, 1 + N] int32, length)`: HF's output is `tokens[:, :length]`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from jaxvad.vlm.blip.model import CaptionModel, LayerCache, TextConfig

NEG = -1.0e9  # HF's "impossible" score


class Special(NamedTuple):
    """Token ids of generation: the prompt, the stop token, greedy's and beam search's padding."""

    bos: int
    sep: int
    pad: int
    beam_fill: int

    @classmethod
    def of(cls, text: TextConfig) -> Special:
        pad = text.sep_token_id if text.pad_token_id is None else text.pad_token_id
        return cls(
            text.bos_token_id, text.sep_token_id, pad, text.pad_token_id or text.sep_token_id
        )


def _check(model: CaptionModel, max_new_tokens: int) -> None:
    limit = model.config.text.max_position_embeddings
    if not 1 <= max_new_tokens <= limit:
        raise ValueError(f"max_new_tokens must be in [1, {limit}], got {max_new_tokens}")


def greedy_search(
    model: CaptionModel, pixel_values: jax.Array, max_new_tokens: int
) -> tuple[jax.Array, jax.Array]:
    """pixel_values `[B, S, S, 3]` → (tokens `[B, 1 + N]` int32, length): HF's greedy output is
    `tokens[:, :length]` (module docstring)."""
    _check(model, max_new_tokens)
    special = Special.of(model.config.text)
    B, N = pixel_values.shape[0], max_new_tokens
    cache = model.text.init_cache(model.vision(pixel_values), B, N)
    tokens = jnp.full((B, N + 1), special.pad, jnp.int32).at[:, 0].set(special.bos)

    def running(carry: tuple) -> jax.Array:
        step, _, unfinished, _ = carry
        return (step < N) & unfinished.any()

    def step_fn(carry: tuple) -> tuple:
        step, tokens, unfinished, cache = carry
        current = jax.lax.dynamic_slice_in_dim(tokens, step, 1, axis=1)  # [B, 1]
        logits, cache = model.text(current, step, cache)
        chosen = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)
        chosen = jnp.where(unfinished, chosen, special.pad)
        tokens = jax.lax.dynamic_update_slice_in_dim(tokens, chosen[:, None], step + 1, axis=1)
        return step + 1, tokens, unfinished & (chosen != special.sep), cache

    start = (jnp.int32(0), tokens, jnp.ones(B, bool), cache)
    steps, tokens, _, _ = jax.lax.while_loop(running, step_fn, start)
    return tokens, steps + 1


class _Beams(NamedTuple):
    """Beam search state (HF's names in brackets); B images, K beams, T = 1 + N."""

    step: jax.Array  # scalar: tokens generated so far by the running beams
    running: jax.Array  # [B, K, T] running hypotheses [running_sequences]
    running_scores: jax.Array  # [B, K] their summed log-probs [running_beam_scores]
    finished: jax.Array  # [B, K, T] best finished hypotheses [sequences]
    finished_scores: jax.Array  # [B, K] length-penalised scores, -1e9 if empty [beam_scores]
    finished_lengths: jax.Array  # [B, K] generated tokens of each (HF counts beam_indices ≠ -1)
    is_finished: jax.Array  # [B, K] slot holds a finished hypothesis [is_sent_finished]
    improvable: jax.Array  # [B, 1] [is_early_stop_heuristic_unsatisfied]
    done: jax.Array  # scalar: HF's loop would stop [this_peer_finished]
    cache: tuple[LayerCache, ...]  # decoder rows b·K + k


def _gather(x: jax.Array, index: jax.Array) -> jax.Array:
    """x `[B, M, ...]`, index `[B, J]` → `[B, J, ...]` (HF `_gather_beams`)."""
    return jax.vmap(lambda row, i: row[i])(x, index)


def beam_search(
    model: CaptionModel,
    pixel_values: jax.Array,
    max_new_tokens: int,
    beams: int,
    *,
    length_penalty: float = 1.0,
    early_stopping: bool | str = False,
) -> tuple[jax.Array, jax.Array]:
    """pixel_values `[B, S, S, 3]` → (tokens `[B, 1 + N]` int32, length): HF's beam search
    output (`num_beams=beams`) is `tokens[:, :length]` (module docstring)."""
    _check(model, max_new_tokens)
    if early_stopping not in (True, False, "never"):
        raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")
    special = Special.of(model.config.text)
    B, N, K = pixel_values.shape[0], max_new_tokens, beams
    C = 2 * K  # HF keeps max(2, 1 + number of stop tokens) · K candidates; BLIP stops on sep only
    stop_when_full = early_stopping is True
    # torch divides float32 scores by the Python float n ** length_penalty: tabulate it.
    penalty = jnp.asarray([float(n) ** length_penalty for n in range(1, N + 1)], jnp.float32)
    hypothetical = early_stopping == "never" and length_penalty > 0.0
    cache = model.text.init_cache(model.vision(pixel_values), B * K, N)
    empty = jnp.full((B, K, N + 1), special.beam_fill, jnp.int32).at[:, :, 0].set(special.bos)
    top_k_mask = jnp.arange(C) < K

    def step_fn(s: _Beams) -> _Beams:
        current = jax.lax.dynamic_slice_in_dim(s.running, s.step, 1, axis=2)  # [B, K, 1]
        logits, cache = model.text(current.reshape(B * K, 1), s.step, s.cache)
        vocab = logits.shape[-1]
        log_probs = jax.nn.log_softmax(logits[:, -1]).reshape(B, K, vocab)
        log_probs = (log_probs + s.running_scores[..., None]).reshape(B, K * vocab)
        top_scores, top_index = jax.lax.top_k(log_probs, C)  # [B, C]
        source, token = top_index // vocab, (top_index % vocab).astype(jnp.int32)
        candidates = _gather(s.running, source).at[:, :, s.step + 1].set(token)  # [B, C, T]
        hits = (token == special.sep) | (s.step + 1 >= N)

        # Running beams for the next step: the best K candidates that did not stop.
        candidate_scores = top_scores + hits.astype(jnp.float32) * NEG
        keep = jax.lax.top_k(candidate_scores, K)[1]
        running, running_scores = _gather(candidates, keep), _gather(candidate_scores, keep)
        rows = (jnp.arange(B)[:, None] * K + _gather(source, keep)).reshape(-1)
        cache = tuple(
            c._replace(self_keys=c.self_keys[rows], self_values=c.self_values[rows]) for c in cache
        )

        # Finished pool: stopped candidates among the top K, if they beat the pool.
        just_finished = hits & top_k_mask
        scores = top_scores / penalty[s.step]
        full = jnp.all(s.is_finished, axis=-1, keepdims=True) & stop_when_full
        scores = scores + full.astype(jnp.float32) * NEG
        scores = scores + (~s.improvable).astype(jnp.float32) * NEG
        scores = scores + (~just_finished).astype(jnp.float32) * NEG
        merged_scores = jnp.concatenate([s.finished_scores, scores], axis=1)
        best = jax.lax.top_k(merged_scores, K)[1]
        generated = jnp.full((B, C), s.step + 1, jnp.int32)
        finished = _gather(jnp.concatenate([s.finished, candidates], axis=1), best)
        lengths = _gather(jnp.concatenate([s.finished_lengths, generated], axis=1), best)
        is_finished = _gather(jnp.concatenate([s.is_finished, just_finished], axis=1), best)
        finished_scores = _gather(merged_scores, best)

        # HF's early-stop heuristic and loop condition.
        length = penalty[N - 1] if hypothetical else penalty[s.step]
        best_running = running_scores[:, :1] / length
        worst = jnp.where(is_finished, finished_scores.min(axis=1, keepdims=True), NEG)
        improvable = s.improvable & jnp.any(best_running > worst, axis=-1, keepdims=True)
        done = ~(jnp.any(improvable) & ~(jnp.all(is_finished) & stop_when_full) & ~jnp.all(hits))
        return _Beams(
            s.step + 1,
            running,
            running_scores,
            finished,
            finished_scores,
            lengths,
            is_finished,
            improvable,
            done,
            cache,
        )

    start = _Beams(
        step=jnp.int32(0),
        running=empty,
        running_scores=jnp.zeros((B, K), jnp.float32).at[:, 1:].set(NEG),
        finished=empty,
        finished_scores=jnp.full((B, K), NEG, jnp.float32),
        finished_lengths=jnp.zeros((B, K), jnp.int32),
        is_finished=jnp.zeros((B, K), bool),
        improvable=jnp.ones((B, 1), bool),
        done=jnp.asarray(False),
        cache=cache,
    )
    end = jax.lax.while_loop(lambda s: ~s.done, step_fn, start)
    return end.finished[:, 0], 1 + end.finished_lengths[:, 0].max()


def generate(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    pixel_values: jax.Array,
    *,
    beams: int,
    max_new_tokens: int,
    length_penalty: float = 1.0,
    early_stopping: bool | str = False,
) -> tuple[jax.Array, jax.Array]:
    """Greedy search (`beams=1`) or beam search of the model `nnx.merge(graphdef, state)`;
    jit it with `graphdef` bound and the keyword arguments static. pixel_values `[B, S, S, 3]`
    → (tokens `[B, 1 + N]` int32, length); HF's output is `tokens[:, :length]`."""
    if beams < 1:
        raise ValueError(f"beams must be at least 1, got {beams}")
    model: CaptionModel = nnx.merge(graphdef, state)
    if beams == 1:
        return greedy_search(model, pixel_values, max_new_tokens)
    return beam_search(
        model,
        pixel_values,
        max_new_tokens,
        beams,
        length_penalty=length_penalty,
        early_stopping=early_stopping,
    )
