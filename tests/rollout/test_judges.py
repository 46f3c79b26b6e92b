import pytest

from rwft.errors import RwftError
from rwft.rollout.judges import KEYS, JudgeItem, make_judge, parse_rubric, parse_spec

GOOD = "Overall: 7\nAccuracy: 10\nReasoning: 5\nComprehensiveness: 4\nPedagogical value: 3\nConfidence calibration: 0"


def test_parse_rubric_lines_json_and_variants():
    assert parse_rubric(GOOD) == dict(zip(KEYS, [0.7, 1.0, 0.5, 0.4, 0.3, 0.0], strict=True))
    bold = GOOD.replace("Overall: 7", "**Overall**: 7/10").replace("Pedagogical value", "pedagogical_value")
    assert parse_rubric(bold)["overall"] == 0.7 and parse_rubric(bold)["pedagogical_value"] == 0.3
    js = 'Sure: {"overall": 8, "accuracy": 9, "reasoning": 6, "comprehensiveness": 5, ' \
         '"pedagogical value": 4, "confidence_calibration": 10}'
    assert parse_rubric(js)["overall"] == 0.8 and parse_rubric(js)["confidence_calibration"] == 1.0


@pytest.mark.parametrize(
    "reply,match",
    [
        ("", "no score for Overall"),
        ("Great answer, 9 out of 10!", "no score"),
        (GOOD.replace("Reasoning: 5\n", ""), "no score for Reasoning"),
        (GOOD.replace("Overall: 7", "Overall: 11"), "outside 0-10"),
        ("Gesamt: 7 Genauigkeit: 8", "no score"),
    ],
)
def test_parse_rubric_rejects(reply, match):
    with pytest.raises(ValueError, match=match):
        parse_rubric(reply)


class Backend:
    """Replies from a list per call; records the temperatures used."""

    def __init__(self, replies):
        self.replies = list(replies)
        self.calls = []
        self.name = "fake"

    def generate(self, convs, temps, seeds, max_new_tokens=None):
        self.calls.append((len(convs), list(temps), list(seeds)))
        return [self.replies.pop(0) for _ in convs]


def item(last="The answer is B.", gold="B", **meta):
    msgs = [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": last}]
    return JudgeItem(msgs, dict(gold=gold, **meta), key="x/0")


def test_rubric_retries_then_succeeds():
    backend = Backend(["I liked it.", GOOD])
    (res,) = make_judge("rubric", backend=backend, retries=2).judge([item()])
    assert res.reward == 0.7 and res.failure is None and res.scores["accuracy"] == 1.0
    assert [c[1] for c in backend.calls] == [[0.0], [0.7]]  # greedy first, then sampled
    assert backend.calls[0][2] != backend.calls[1][2]


def test_rubric_failure_is_null_reward_never_zero():
    backend = Backend(["nope"] * 3 + [GOOD])
    a, b = make_judge("exact:0.5,rubric:0.5", backend=backend, retries=1).judge([item(), item()])
    # first try: both bad; retry: first bad again, second good
    assert a.reward is None and "unparseable judge reply after 2 tries" in a.failure
    assert a.scores["exact"] == 1.0
    assert b.reward == pytest.approx(0.5 * 1.0 + 0.5 * 0.7) and b.failure is None
    assert [c[0] for c in backend.calls] == [2, 2]


def test_rubric_dimension_and_weights():
    (res,) = make_judge("rubric.reasoning:2,exact:1", backend=Backend([GOOD])).judge([item(last="no idea")])
    assert res.reward == pytest.approx(2 * 0.5 + 0.0)


@pytest.mark.parametrize(
    "last,gold,expected",
    [
        ("The answer is B.", "B", 1.0),
        ("The answer is C.", "B", 0.0),
        ("", "B", 0.0),
        ("It was The Beatles, I believe.", ["Beatles", "the beatles"], 1.0),
        ("Elvis.", ["Beatles"], 0.0),
        ("1972", "1972", 1.0),
    ],
)
def test_exact_match(last, gold, expected):
    (res,) = make_judge("exact").judge([item(last, gold)])
    assert res.reward == expected and res.scores == {"exact": expected}


def test_env_judge_uses_env_reward_and_needs_it():
    (res,) = make_judge("env").judge([item(env_reward=-4.0)])
    assert res.reward == -4.0
    with pytest.raises(RwftError, match="env_reward"):
        make_judge("env").judge([item()])
    with pytest.raises(RwftError, match="metadata.gold"):
        make_judge("exact").judge([JudgeItem([{"role": "assistant", "content": "x"}], {}, "f:1")])


@pytest.mark.parametrize("spec", ["", "bleu", "exact:heavy", "rubric.style", "exact.overall"])
def test_bad_specs(spec):
    with pytest.raises(RwftError):
        parse_spec(spec)


def test_rubric_needs_a_model():
    with pytest.raises(RwftError, match="judge-model"):
        make_judge("rubric")


def test_rubric_through_http_endpoint():
    from openai_stub import StubServer

    server = StubServer(lambda msgs, body: GOOD if "Rate the assistant" in msgs[0]["content"] else "?")
    try:
        judge = make_judge("rubric", judge_model=server.url, api_model="judge-7b")
        (res,) = judge.judge([item()])
        assert res.reward == 0.7
        assert server.requests[0][1]["model"] == "judge-7b"
        assert "reference answer is: B" in server.requests[0][1]["messages"][0]["content"]
    finally:
        server.close()
