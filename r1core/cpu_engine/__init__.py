"""The ``"r1"`` engine: the project's decoding loop over the model's own forward, tuned for CPU
(it runs on any device). :mod:`r1core.generation` imports it the first time it samples with it;
nothing here runs at import, and it registers its attention function in transformers only when it
first decodes (:func:`r1core.cpu_engine.attention.register`).

Against transformers ``generate`` it

1. samples top-p/top-k/min-p from the top-``candidates`` logits instead of sorting the whole
   vocabulary every step (a full sort of ``(64, 49152)`` logits costs as much as half a SmolLM2
   decode step on 2 cores; rows whose candidates hold less than ``top_p`` of the mass fall back to
   the full sort, so the distribution is exactly HF's; on CPU the candidates come from the
   vocabulary tiles with the largest maxima), and draws each token by inverse CDF over vocabulary
   tiles instead of ``torch.multinomial``'s exponential variate per vocabulary entry
   (:mod:`~r1core.cpu_engine.next_token`);
2. pre-fills each distinct prompt once and copies its KV cache to its ``k`` samples (GRPO groups,
   pass@k), the prompts' shared prefix (a system prompt) once, in passes of a token budget
   (:mod:`~r1core.cpu_engine.prefill`);
3. drops finished sequences from the batch, their KV cache compacted in place in buffers
   allocated once (:mod:`~r1core.cpu_engine.cache`), so the batch only computes live rows
   (:mod:`~r1core.cpu_engine.loop`);
4. on CPU runs every linear layer through oneDNN on weights packed once per call
   (:mod:`~r1core.cpu_engine.linears`);
5. on CPU decodes Llama-family models (Llama, Mistral, Qwen2/3) with
   :class:`~r1core.cpu_engine.decoder.CpuDecoder`: the model's own modules and packed weights,
   with one C++ kernel call per layer (:mod:`~r1core.cpu_engine.kernel`) for rotary + cache write
   + attention over each row's own columns; other models split decode attention into row buckets
   that each read only their own cache columns (:mod:`~r1core.cpu_engine.attention`);
6. on CPU keeps torch's thread count at the cores other processes leave free, read before every
   pre-fill pass and decode step (:mod:`~r1core.cpu_engine.threads`): with OpenMP every parallel
   region waits for its slowest thread, and a thread sharing a core with another busy process
   stalls every region of the step.

Same weights, same forward up to fp32 summation order, so the completions' log-probabilities
under the training model equal the sampler's (no importance-sampling correction is needed).
"""

from r1core.cpu_engine.loop import decode

__all__ = ["decode"]
