import pytest
import torch

from rwft.errors import RwftError
from rwft.rollout.envs import make_env
from rwft.rollout.hf_policy import HFPolicy
from rwft.rollout.policies import OpenAIPolicy, make_policy, turn_seed

CONV = [{"role": "user", "content": "What is 2 + 3?"}]


@pytest.fixture(scope="module")
def tiny():
    return HFPolicy("tiny", max_new_tokens=8)


def test_hf_rows_independent_of_batch_and_seeded(tiny):
    convs = [CONV, [{"role": "user", "content": "A much longer question about the sun and the moon?"}], CONV]
    temps, seeds = [1.0, 1.0, 0.0], [11, 12, 13]
    batch = tiny.generate(convs, temps, seeds)
    alone = [tiny.generate([c], [t], [s])[0] for c, t, s in zip(convs, temps, seeds, strict=True)]
    assert batch == alone
    assert tiny.generate([CONV], [1.0], [11]) != tiny.generate([CONV], [1.0], [99])
    assert tiny.generate([CONV], [0.0], [1]) == tiny.generate([CONV], [0.0], [2])  # greedy ignores the seed
    assert tiny.generated_tokens > 0


def test_turn_seed_depends_on_each_part():
    base = turn_seed(0, "c", 0, 0)
    assert base == turn_seed(0, "c", 0, 0)
    assert len({base, turn_seed(1, "c", 0, 0), turn_seed(0, "d", 0, 0), turn_seed(0, "c", 1, 0),
                turn_seed(0, "c", 0, 1)}) == 5


def test_make_policy_specs():
    env = make_env("mcqa")
    assert make_policy("scripted", env).name == "scripted:1"
    assert make_policy("scripted:0.25", env).skill == 0.25
    assert make_policy("scripted:mixed", env).skill is None
    with pytest.raises(RwftError, match="scripted"):
        make_policy("scripted:good", env)
    with pytest.raises(RwftError, match="api-model"):
        make_policy("http://localhost:1/v1", env)
    with pytest.raises(RwftError, match="no such model directory"):
        make_policy("/nonexistent/model-dir", env)


def test_http_policy_sends_key_from_env_only_and_never_leaks_it(monkeypatch):
    from openai_stub import StubServer

    monkeypatch.setenv("MY_KEY", "sk-secret-123")
    server = StubServer(lambda msgs, body: f"echo {msgs[-1]['content']} t={body['temperature']}")
    try:
        p = OpenAIPolicy(server.url, "m", api_key_env="MY_KEY")
        out = p.generate([CONV, [{"role": "user", "content": "hi"}]], [0.5, 1.0], [1, 2])
        assert out == ["echo What is 2 + 3? t=0.5", "echo hi t=1.0"]
        headers = [h for h, _ in server.requests]
        assert all(h["Authorization"] == "Bearer sk-secret-123" for h in headers)
        assert "sk-secret" not in repr(vars(p))
    finally:
        server.close()
    failing = StubServer(lambda m, b: "", status=401)
    try:
        p = OpenAIPolicy(failing.url, "m", api_key_env="MY_KEY", retries=1)
        with pytest.raises(RwftError) as e:
            p.generate([CONV], [0.0], [0])
        assert "401" in str(e.value) and "sk-secret" not in str(e.value)
        assert len(failing.requests) == 1  # a 401 is not retried
    finally:
        failing.close()


def test_collect_through_http_policy(tmp_path):
    import json

    from openai_stub import StubServer
    from rwft.rollout.collect import CollectConfig, run_collect

    server = StubServer(lambda msgs, body: "The answer is A.")
    try:
        run_collect(CollectConfig(env="mcqa", out=str(tmp_path / "o.jsonl"), policy=server.url, api_model="m",
                                  contexts=3, samples_per_context=2, progress=False))
    finally:
        server.close()
    recs = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert len(recs) == 6 and all(r["metadata"]["final_answer"] == "A" for r in recs)
    assert len(server.requests) == 18 and recs[0]["metadata"]["policy"] == f"m@{server.url}"


@pytest.mark.parametrize("env_name,env_args", [("mcqa", ["source=arithmetic"]), ("twenty-questions", ["horizon=4"])])
def test_kv_cache_reuse_gives_the_episodes_of_fresh_prefills(env_name, env_args):
    """Agent texts are stripped and re-tokenized between turns: the reused cache must still give exactly
    the conversations of full prefills."""
    from rwft.rollout.collect import run_episodes

    env = make_env(env_name, env_args)
    tasks = [t for t in env.tasks(3, 0) for _ in range(2)]
    samples, temps = [0, 1] * 3, [1.0, 0.0] * 3
    runs = {}
    for reuse in (True, False):
        policy = HFPolicy("tiny", max_new_tokens=12, reuse_cache=reuse)
        episodes = run_episodes(env, policy, tasks, samples, temps, seed=0)
        runs[reuse] = ([ep.messages for ep in episodes], policy.prefilled_tokens)
    assert runs[True][0] == runs[False][0]
    assert max(len(m) for m in runs[True][0]) > 3  # several turns were played
    assert runs[True][1] < runs[False][1]  # and later turns prefilled only their new tokens


def test_kv_cache_reuse_with_rows_leaving_reordered_and_edited():
    """Rows leave, come back in another order, and one agent text is edited (as an environment that
    truncates it would): each call gives what a fresh prefill gives, and a new owner starts afresh."""
    fresh, reused = HFPolicy("tiny", max_new_tokens=10, reuse_cache=False), HFPolicy("tiny", max_new_tokens=10)
    owners = [object() for _ in range(4)]
    convs = [[{"role": "user", "content": q}] for q in ("2 + 3?", "A long question about the moon and the sun?",
                                                         "Hi", "Name a colour.")]
    plan = [([0, 1, 2, 3], {}), ([0, 2, 3], {2: "edited"}), ([3, 0], {}), ([3, 0, 1], {})]
    for turn, (rows, edits) in enumerate(plan):
        args = ([convs[r] for r in rows], [1.0] * len(rows), [100 * turn + r for r in rows])
        before = reused.prefilled_tokens
        out = reused.generate(*args, owners=[owners[r] for r in rows])
        assert out == fresh.generate(*args), f"turn {turn}"
        if turn in (1, 2):
            assert reused.prefilled_tokens - before < sum(len(reused._render(c, 10**6)) for c in args[0])
        for r, text in zip(rows, out, strict=True):
            convs[r] = convs[r] + [{"role": "assistant", "content": edits.get(r, text)},
                                   {"role": "user", "content": "No." if r % 2 else "Tell me more, please."}]


def test_from_model_plays_the_callers_model_without_loading_one(tiny, monkeypatch):
    """The policy plays the given model object (no load, no copy): it generates what the loaded policy does,
    and a change of the model's weights in place (a learner's sync) shows after ``reset_cache``."""
    import rwft.presets
    from rwft.presets import load_model, load_tokenizer

    model, tok = load_model("tiny").eval(), load_tokenizer("tiny")
    monkeypatch.setattr(rwft.presets, "load_model", lambda *a, **k: pytest.fail("from_model loaded a model"))
    policy = HFPolicy.from_model(model, tok, name="learner", max_new_tokens=8)
    assert policy.model is model and policy.name == "learner" and policy.device == "cpu"
    convs = [CONV, [{"role": "user", "content": "Hi"}]]
    before = policy.generate(convs, [1.0, 0.0], [5, 6], owners=convs)
    assert before == tiny.generate(convs, [1.0, 0.0], [5, 6])
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * p.std() * torch.randn(p.shape, generator=torch.Generator().manual_seed(0)))
    policy.reset_cache()
    assert policy.generate(convs, [1.0, 0.0], [5, 6], owners=convs) != before


def test_from_model_refuses_a_tokenizer_without_chat_template():
    from rwft.presets import load_model, load_tokenizer

    tok = load_tokenizer("tiny")
    tok.chat_template = None
    with pytest.raises(RwftError, match="learner: the tokenizer has no chat template"):
        HFPolicy.from_model(load_model("tiny"), tok, name="learner")


@pytest.mark.filterwarnings("error::FutureWarning", "error::DeprecationWarning")
def test_generation_passes_the_kv_cache_without_a_deprecated_argument():
    """Prefill, shared prefill of a repeated prompt, generate and a resumed turn give the cache to transformers
    through its Cache API (``cache=``): no FutureWarning or DeprecationWarning."""
    policy = HFPolicy("tiny", max_new_tokens=4)
    owners = [object(), object()]
    out = policy.generate([CONV, CONV], [1.0, 1.0], [1, 2], owners=owners)  # one prompt twice: shared prefill
    convs = [CONV + [{"role": "assistant", "content": t}, {"role": "user", "content": "And?"}] for t in out]
    before = policy.prefilled_tokens
    policy.generate(convs, [1.0, 1.0], [3, 4], owners=owners)
    assert policy.prefilled_tokens - before < sum(len(policy._render(c, 10**6)) for c in convs)  # resumed
