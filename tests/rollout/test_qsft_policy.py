"""Q-SFT's policy extraction: the LogitsProcessor against hand computations, batched generation, run dirs."""

from __future__ import annotations

import json
import math

import pytest
import torch

from rwft.errors import RwftError
from rwft.rollout.envs import make_env
from rwft.rollout.hf_policy import HFPolicy
from rwft.rollout.policies import make_policy
from rwft.rollout.qsft_policy import QSFTPolicy, QSFTProcessor, extraction_scores, load_q_model

CONVS = [[{"role": "user", "content": "What is 2 + 3?"}],
         [{"role": "user", "content": "A much longer question about the sun and the moon?"}],
         [{"role": "user", "content": "Hi"}]]


def perturbed_tiny(out, seed, scale=0.5):
    """The tiny preset with seeded noise on every weight, saved to ``out``."""
    from rwft.presets import load_model, load_tokenizer

    model = load_model("tiny")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * p.std() * torch.randn(p.shape, generator=g))
    model.save_pretrained(out)
    load_tokenizer("tiny").save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A fabricated Q-SFT run: the Q model in the directory, pi_phi in ``behaviour/`` inside it."""
    run = perturbed_tiny(tmp_path_factory.mktemp("qsft") / "run", seed=1)
    perturbed_tiny(run / "behaviour", seed=2)
    (run / "qsft.json").write_text(json.dumps({"behaviour_model": "behaviour", "beta": 3.0}))
    return run


def test_extraction_by_hand():
    b, q, beta = [2.0, 1.0, 0.0, -1.0], [0.0, 2.0, 0.0, 0.0], 3.0
    pi_phi = [math.exp(x) / sum(math.exp(y) for y in b) for x in b]
    p = [math.exp(x) / sum(math.exp(y) for y in q) for x in q]
    unnorm = [a * math.exp(beta * c) for a, c in zip(pi_phi, p, strict=True)]
    expected = [u / sum(unnorm) for u in unnorm]
    got = torch.softmax(extraction_scores(torch.tensor([b]), torch.tensor([q]), beta), -1)[0]
    assert got.tolist() == pytest.approx(expected, rel=1e-6)
    assert expected[1] > pi_phi[1]  # the valued token gains
    same = torch.softmax(extraction_scores(torch.tensor([b]), torch.tensor([q]), 0.0), -1)[0]
    assert same.tolist() == pytest.approx(pi_phi, rel=1e-6)  # beta 0: the behaviour policy
    big = extraction_scores(torch.tensor([b]), torch.tensor([q]), 1e4)[0]
    assert int(big.argmax()) == 1  # beta -> infinity: greedy over p_theta


def test_processor_equals_full_forwards_with_left_padding(run_dir):
    """Step by step, the processor's Q logits (prefill, then one token at a time on its cache) are those of a
    fresh forward of the Q model over the whole left-padded sequence."""
    q = load_q_model(run_dir).eval()
    ids = torch.tensor([[0, 0, 5, 17, 99], [7, 3, 250, 11, 4]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    proc = QSFTProcessor(q, 2.5, mask)
    g = torch.Generator().manual_seed(0)
    for step in range(3):
        scores = torch.randn(2, q.config.vocab_size, generator=g)
        got = proc(ids, scores)
        full_mask = torch.cat([mask, torch.ones(2, step, dtype=mask.dtype)], 1)
        with torch.no_grad():
            logits = q(input_ids=ids, attention_mask=full_mask,
                       position_ids=(full_mask.cumsum(-1) - 1).clamp(min=0)).logits[:, -1]
        want = torch.log_softmax(scores, -1) + 2.5 * torch.softmax(logits, -1)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        ids = torch.cat([ids, torch.tensor([[42 + step], [8 * step + 1]])], 1)


def test_make_policy_of_a_run_dir_and_batched_equals_per_row(run_dir):
    policy = make_policy(str(run_dir), None, 10)
    assert isinstance(policy, QSFTPolicy) and isinstance(policy, HFPolicy)
    assert policy.beta == 3.0 and "qsft" in policy.name and len(policy.logits_processors) == 1
    assert make_policy(str(run_dir), None, 10, qsft_beta=7.0).beta == 7.0
    temps, seeds = [1.0, 1.0, 0.0], [11, 12, 13]
    batch = policy.generate(CONVS, temps, seeds)
    alone = [policy.generate([c], [t], [s])[0] for c, t, s in zip(CONVS, temps, seeds, strict=True)]
    assert batch == alone
    # the Q model matters: a strong beta changes what the behaviour model alone would say
    behaviour = HFPolicy(str(run_dir / "behaviour"), 10)
    strong = make_policy(str(run_dir), None, 10, qsft_beta=1e4)
    assert strong.generate(CONVS, [0.0] * 3, seeds) != behaviour.generate(CONVS, [0.0] * 3, seeds)


@pytest.mark.filterwarnings("error::FutureWarning", "error::DeprecationWarning")
def test_processor_passes_its_cache_without_a_deprecated_argument(run_dir):
    """The Q model's prefill and steps give the cache through transformers' Cache API (``cache=``)."""
    q = load_q_model(run_dir).eval()
    ids, mask = torch.tensor([[0, 5, 17], [7, 3, 250]]), torch.tensor([[0, 1, 1], [1, 1, 1]])
    proc = QSFTProcessor(q, 1.0, mask)
    proc(ids, torch.zeros(2, q.config.vocab_size))
    proc(torch.cat([ids, ids[:, -1:]], 1), torch.zeros(2, q.config.vocab_size))
    assert proc.cache.get_seq_length() == 4


def recording(policy):
    """The policy, with every QSFTProcessor it makes kept in the returned list."""
    made, factory = [], policy.logits_processors[0]
    policy.logits_processors[0] = lambda *args: made.append(factory(*args)) or made[-1]
    return made


def test_episodes_with_cache_reuse_equal_fresh_prefills(run_dir):
    """Across turns HFPolicy reuses pi_phi's cache (masked, compacted columns) and the Q model's alongside;
    episodes equal those of fresh prefills of both."""
    from rwft.rollout.collect import run_episodes

    env = make_env("twenty-questions", ["horizon=3"])
    tasks = [t for t in env.tasks(2, 0) for _ in range(2)]
    runs, reused = [], []
    for reuse in (True, False):
        policy = make_policy(str(run_dir), env, 8)
        policy.reuse_cache = reuse
        made = recording(policy)
        runs.append([ep.messages for ep in run_episodes(env, policy, tasks, [0, 1] * 2, [1.0, 0.0] * 2, seed=0)])
        reused.append([p.reused_columns for p in made])
    assert runs[0] == runs[1] and max(len(m) for m in runs[0]) > 3
    assert reused[1] == [0, 0, 0] and reused[0][0] == 0 and all(r > 0 for r in reused[0][1:])


def test_q_cache_follows_rows_leaving_reordered_and_edited(run_dir):
    """As in test_policies: rows leave, come back in another order, one agent text is edited; each call gives
    what fresh prefills of both models give."""
    fresh, reused = make_policy(str(run_dir), None, 10), make_policy(str(run_dir), None, 10)
    fresh.reuse_cache = False
    made = recording(reused)
    owners = [object() for _ in range(4)]
    convs = [[{"role": "user", "content": q}] for q in ("2 + 3?", "A long question about the moon and the sun?",
                                                         "Hi", "Name a colour.")]
    plan = [([0, 1, 2, 3], {}), ([0, 2, 3], {2: "edited"}), ([3, 0], {}), ([3, 0, 1], {})]
    for turn, (rows, edits) in enumerate(plan):
        args = ([convs[r] for r in rows], [1.0] * len(rows), [100 * turn + r for r in rows])
        out = reused.generate(*args, owners=[owners[r] for r in rows])
        assert out == fresh.generate(*args), f"turn {turn}"
        assert (made[-1].reused_columns > 0) == (turn in (1, 2))  # turn 3 brings back row 1: afresh
        for r, text in zip(rows, out, strict=True):
            convs[r] = convs[r] + [{"role": "assistant", "content": edits.get(r, text)},
                                   {"role": "user", "content": "No." if r % 2 else "Tell me more, please."}]


def test_lora_adapter_run_dir(tmp_path, run_dir):
    from peft import LoraConfig, get_peft_model

    from rwft.presets import load_model

    model = get_peft_model(load_model("tiny"), LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    model.save_pretrained(tmp_path)
    x = torch.tensor([[5, 17, 99, 3]])
    with torch.no_grad():
        want = model(input_ids=x).logits
        got = load_q_model(tmp_path)(input_ids=x).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("content,match", [
    ({"beta": 1.0}, "missing key 'behaviour_model'"),
    ({"behaviour_model": "tiny"}, "missing key 'beta'"),
    ({"behaviour_model": "tiny", "beta": "high"}, "key 'beta'"),
    ("not json", "unreadable"),
])
def test_bad_qsft_json_is_one_line_naming_the_file(tmp_path, content, match):
    (tmp_path / "qsft.json").write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(RwftError, match=match) as e:
        make_policy(str(tmp_path), None, 8)
    assert str(tmp_path / "qsft.json") in str(e.value) and "\n" not in str(e.value)


def test_run_dir_without_a_model_is_refused(tmp_path):
    (tmp_path / "qsft.json").write_text(json.dumps({"behaviour_model": "tiny", "beta": 1.0}))
    with pytest.raises(RwftError, match="must hold the Q model"):
        make_policy(str(tmp_path), None, 8)


def test_eval_and_collect_play_a_run_dir_with_its_beta(tmp_path, run_dir):
    from rwft.eval.evaluate import EvalConfig, run_eval
    from rwft.rollout.collect import CollectConfig, run_collect

    common = dict(env="twenty-questions", env_args=["horizon=2"], max_new_tokens=8)
    result = run_eval(EvalConfig(policy=str(run_dir), output=str(tmp_path / "e"), episodes=2, qsft_beta=5.0,
                                 similarity=False, quiet=True, **common))
    episodes = [json.loads(x) for x in (tmp_path / "e" / "episodes-s1000.jsonl").read_text().splitlines()]
    assert result["episodes"] == 2 and all("beta 5" in r["metadata"]["policy"] for r in episodes)
    out = tmp_path / "c.jsonl"
    run_collect(CollectConfig(policy=str(run_dir), out=str(out), contexts=1, samples_per_context=1, quiet=True,
                              **common))
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert "beta 3" in recs[0]["metadata"]["policy"]  # qsft.json's
    assert "qsft_beta" not in json.loads((tmp_path / "c.jsonl.args.json").read_text())
