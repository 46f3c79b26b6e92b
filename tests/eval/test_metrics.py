import math

import pytest
import torch

from rwft.data.encode import encode_conversation
from rwft.eval import metrics
from rwft.presets import load_model, load_tokenizer


def test_t_quantile_matches_tables():
    # Student-t table values (two-sided 95%): df=1 12.706, df=4 2.776, df=9 2.262, df=30 2.042; normal 1.960
    for df, want in [(1, 12.7062), (4, 2.7764), (9, 2.2622), (30, 2.0423), (1e7, 1.9600)]:
        assert metrics.t_quantile(0.975, df) == pytest.approx(want, abs=1e-4)


def test_mean_ci_t_interval_by_hand():
    # values 1,2,3,4: mean 2.5, s = sqrt(5/3) = 1.2910, half = 3.1824 * 1.2910 / 2 = 2.0543
    ci = metrics.mean_ci([1, 2, 3, 4])
    assert ci["mean"] == 2.5
    assert ci["std"] == pytest.approx(math.sqrt(5 / 3))
    assert ci["half"] == pytest.approx(3.18245 * math.sqrt(5 / 3) / 2, rel=1e-4)
    assert ci["lo"] == pytest.approx(2.5 - ci["half"]) and ci["hi"] == pytest.approx(2.5 + ci["half"])
    assert ci["n"] == 4


def test_mean_ci_edge_cases():
    one = metrics.mean_ci([0.7])
    assert one["mean"] == one["lo"] == one["hi"] == 0.7 and one["half"] == 0
    assert math.isnan(metrics.mean_ci([])["mean"])
    same = metrics.mean_ci([0.5, 0.5, 0.5])
    assert same["lo"] == same["hi"] == 0.5
    with pytest.raises(ValueError):
        metrics.mean_ci([1, 2], method="nope")


def test_mean_ci_bootstrap_brackets_mean_and_is_reproducible():
    xs = [0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0]
    a = metrics.mean_ci(xs, method="bootstrap", seed=3)
    b = metrics.mean_ci(xs, method="bootstrap", seed=3)
    assert a == b
    assert a["lo"] < 0.625 < a["hi"]
    # resample means move in steps of 1/8 and cannot leave [0, 1]
    assert 0 <= a["lo"] and a["hi"] <= 1 and (a["lo"] * 8) == pytest.approx(round(a["lo"] * 8))
    # unlike the t interval (which leaves [0, 1] here), the bootstrap one stays inside the data's range
    t = metrics.mean_ci(xs)
    assert t["hi"] > 1 and a["hi"] < t["hi"]


def test_distinct_n_by_hand():
    # "the cat the cat" -> bigrams: (the,cat) (cat,the) (the,cat): 2 unique of 3
    assert metrics.distinct_n(["the cat the cat"], 2) == pytest.approx(2 / 3)
    # unigrams pooled over two texts: the, cat, the, dog -> 3 unique of 4
    assert metrics.distinct_n(["The cat.", "the DOG"], 1) == pytest.approx(3 / 4)
    assert metrics.distinct_n(["one"], 2) == 0.0


def test_repetition_rate_by_hand():
    # a b c a b c -> trigrams abc bca cab abc: 3 unique of 4 -> 0.25 repeated
    assert metrics.repetition_rate("a b c a b c", 3) == pytest.approx(0.25)
    assert metrics.repetition_rate("all different words here", 3) == 0.0
    assert metrics.repetition_rate("", 3) == 0.0


def test_thinking_and_length():
    assert metrics.uses_thinking("<thinking>x y</thinking> The answer is B")
    assert not metrics.uses_thinking("<thinking> never closed")
    assert metrics.response_length("The answer is B.") == 4
    conv = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "<thinking>a</thinking> one two"},
        {"role": "user", "content": "more"},
        {"role": "assistant", "content": "x y z w"},
    ]
    tm = metrics.text_metrics([conv])
    assert tm["thinking"] == [1.0]
    # words: thinking a thinking one two (5), x y z w (4)
    assert tm["length"] == [(5 + 4) / 2]


CONV = [
    {"role": "user", "content": "Question: what is 2 plus 2?"},
    {"role": "assistant", "content": "It is four."},
    {"role": "user", "content": "Give your final answer."},
    {"role": "assistant", "content": "The answer is B"},
]


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny").eval(), load_tokenizer("tiny")


def _agent_texts_of(tok, enc):
    runs: dict[int, list[int]] = {}
    for t, k in zip(enc.input_ids, enc.turn_index, strict=True):
        if k >= 0:
            runs.setdefault(k, []).append(t)
    return [tok.decode(r) for _, r in sorted(runs.items())]


def test_perplexity_tokens_decode_to_agent_text(tiny):
    _, tok = tiny
    enc = encode_conversation(tok, CONV, 10**9)
    assert _agent_texts_of(tok, enc) == ["It is four.<|im_end|>", "The answer is B<|im_end|>"]


def test_perplexity_against_hand_computation(tiny):
    model, tok = tiny
    enc = encode_conversation(tok, CONV, 10**9)
    full = enc.input_ids
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([full])).logits[0]
    # by hand: for every agent token position j, -log softmax(logits[j-1])[full[j]]
    nll = []
    for j, k in enumerate(enc.turn_index):
        if k >= 0:
            p = torch.softmax(logits[j - 1].double(), -1)[full[j]]
            nll.append(-math.log(float(p)))
    want = math.exp(sum(nll) / len(nll))
    assert metrics.perplexity(model, tok, [CONV]) == pytest.approx(want, rel=1e-5)
    # pooling is token-weighted: two conversations = pooled NLL over all their tokens, not a mean of ppls
    short = CONV[:2]
    t1, c1 = metrics.agent_nll(model, tok, CONV)
    t2, c2 = metrics.agent_nll(model, tok, short)
    assert metrics.perplexity(model, tok, [CONV, short]) == pytest.approx(math.exp((t1 + t2) / (c1 + c2)))
    # a random 2k-vocab model is near-uniform: perplexity of the order of the vocabulary size
    assert 200 < want < 20000


class PositionModel:
    """A fake LM whose log-probability of the token at position j is a distinct known number (-j / 1000),
    so agent_nll's total says exactly which positions it scored."""

    def __init__(self, vocab: int):
        self.vocab = vocab
        self.seen: list[list[int]] = []

    def __call__(self, input_ids):
        ids = input_ids[0].tolist()
        self.seen.append(ids)
        n = len(ids)
        logits = torch.full((n, self.vocab), -1e4)
        for j in range(1, n):  # row j-1 predicts token j: log p = 0 except a tiny penalty that depends on j
            logits[j - 1, ids[j]] = 0.0
            logits[j - 1, (ids[j] + 1) % self.vocab] = math.log(math.expm1(j / 1000))
        return type("Out", (), {"logits": logits[None]})()


TOOL_CONV = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
    {"role": "tool", "content": "sunny"},
    {"role": "assistant", "content": "Checking twice.", "weight": 0},
    {"role": "user", "content": "And?"},
    {"role": "assistant", "content": "Sunny."},
]


@pytest.mark.parametrize("conv", [CONV, TOOL_CONV], ids=["plain", "tools-and-weight-0"])
def test_perplexity_scores_exactly_the_trained_tokens(tiny, conv):
    _, tok = tiny
    model = PositionModel(len(tok))
    total, count = metrics.agent_nll(model, tok, conv)
    enc = encode_conversation(tok, conv, 10**9)
    trained = [j for j, k in enumerate(enc.turn_index) if k >= 0]
    assert model.seen == [enc.input_ids]  # the whole conversation, as training tokenizes it
    assert count == len(trained)
    # -log p(x_j) = log(1 + expm1(j/1000)) = j / 1000: the total is the sum of the scored positions
    assert total == pytest.approx(sum(trained) / 1000, rel=1e-4)
    if conv is TOOL_CONV:  # the tool call is scored, the tool result and the weight-0 turn are not
        assert _agent_texts_of(tok, enc) == [
            '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>',
            "Sunny.<|im_end|>"]


def test_semantic_similarity_offline():
    emb = metrics.Embedder()
    sims = metrics.semantic_similarity(
        ["The sun heats the earth.", "The sun heats the earth."],
        ["Sunlight warms our planet.", "I like to eat pizza with cheese."],
        emb,
    )
    assert sims[0] > sims[1] + 0.3
    same = metrics.semantic_similarity(["A cat sat."], ["A cat sat."], emb)
    assert same[0] == pytest.approx(1.0, abs=1e-5)


def test_pass_hat_k_by_hand():
    from rwft.eval.metrics import pass_hat_k

    tasks = [[True, True, False, True], [False, False, False, False], [True, True, True, True], [True]]
    # k = 1: success rates 3/4, 0, 1, 1; k = 2: C(3,2)/C(4,2) = 1/2, 0, 1 (the one-sample task left out)
    assert pass_hat_k(tasks, 1) == pytest.approx((0.75 + 0 + 1 + 1) / 4)
    assert pass_hat_k(tasks, 2) == pytest.approx((0.5 + 0 + 1) / 3)
    assert pass_hat_k(tasks, 4) == pytest.approx((0 + 0 + 1) / 3)
    assert math.isnan(pass_hat_k(tasks, 5))
