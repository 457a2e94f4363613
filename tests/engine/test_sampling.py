"""Sampling: seeded and reproducible, top-k 1 is greedy, parameters checked, costs charged."""

from __future__ import annotations

import numpy as np
import pytest

from waferllm.engine.sampling import SamplingError, SamplingParams, sample


def test_sampling_params_ranges():
    for bad in (dict(temperature=-0.1), dict(top_p=0.0), dict(top_p=1.01), dict(top_k=-1), dict(max_new_tokens=0)):
        with pytest.raises(SamplingError):
            SamplingParams(**bad)


def test_sample_distribution_and_filters():
    logits = np.log(np.array([0.5, 0.3, 0.2, 1e-9], np.float32))
    rng = np.random.default_rng(0)
    draws = [sample(logits, SamplingParams(temperature=1.0), rng) for _ in range(4000)]
    freq = np.bincount(draws, minlength=4) / len(draws)
    np.testing.assert_allclose(freq[:3], [0.5, 0.3, 0.2], atol=0.03)  # Gumbel-max samples the softmax
    assert all(sample(logits, SamplingParams(temperature=1.0, top_k=1), rng) == 0 for _ in range(50))
    top_p = {sample(logits, SamplingParams(temperature=1.0, top_p=0.6), rng) for _ in range(300)}
    assert top_p == {0, 1}


@pytest.mark.slow
def test_seeded_generation_reproducible_and_costed(engine_for, smollm):
    eng = engine_for("20x20")
    ids = smollm[2].encode("Once upon a time")
    p = SamplingParams(max_new_tokens=8, temperature=0.9, seed=5, ignore_eos=True)
    a = [e.token_id for e in eng.generate(ids, p)]
    assert a == [e.token_id for e in eng.generate(ids, p)]
    assert "sample" in eng.ledger.phases
    greedy = [e.token_id for e in eng.generate(ids, SamplingParams(max_new_tokens=8, ignore_eos=True))]
    topk1 = [e.token_id for e in eng.generate(ids, SamplingParams(max_new_tokens=8, temperature=0.7, top_k=1,
                                                                       ignore_eos=True))]
    assert topk1 == greedy


@pytest.mark.slow
def test_stop_strings_and_eos(engine_for, smollm):
    from waferllm.engine.textgen import generate_text, prompt_ids

    eng = engine_for("20x20")
    ids = prompt_ids(smollm[2], "What is the capital of France?", chat=True)
    full = generate_text(eng, ids, SamplingParams(max_new_tokens=24))
    assert full.finish_reason == "stop" and "Paris" in full.text  # ended by EOS
    pieces = []
    cut = generate_text(eng, ids, SamplingParams(max_new_tokens=24, stop=("Paris",)), on_text=pieces.append)
    assert cut.finish_reason == "stop" and "Paris" not in cut.text and full.text.startswith(cut.text)
    assert "".join(pieces) == cut.text  # streamed increments add up to the final text, stop string held back
    short = generate_text(eng, ids, SamplingParams(max_new_tokens=2))
    assert short.finish_reason == "length" and len(short.token_ids) == 2
