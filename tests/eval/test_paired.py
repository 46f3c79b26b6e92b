import json

from rwft.eval.paired import paired_difference, paired_lines


def write_cell(cells, name, episodes, file="episodes-s1000.jsonl"):
    """episodes: (id, reward, reply) triples, written as rwft compare's evaluation writes them."""
    (cells / name / "eval").mkdir(parents=True)
    rows = [{"id": i, "context_id": i.split("/")[0], "reward": r,
             "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": reply}]}
            for i, r, reply in episodes]
    (cells / name / "eval" / file).write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_paired_difference_by_hand(tmp_path):
    write_cell(tmp_path, "base-s0", [("a/0", 0.0, "x"), ("b/0", 1.0, "y"), ("c/0", 0.9, "z"), ("d/0", 0.0, "w")])
    write_cell(tmp_path, "refit-s0", [("b/0", 1.0, "y"), ("a/0", 1.0, "x2"), ("c/0", 0.9, "z2"), ("d/0", 0.0, "w")])
    write_cell(tmp_path, "base-s1", [("e/0", 0.0, "v"), ("f/0", 0.0, "u")], file="episodes-s1001.jsonl")
    write_cell(tmp_path, "refit-s1", [("e/0", 1.0, "v2"), ("f/0", 0.0, "u"), ("g/0", 1.0, "t")],
               file="episodes-s1001.jsonl")  # g has no base episode: left out
    d = paired_difference(tmp_path, "refit", [0, 1])
    # diffs 1, 0, 0, 0 (seed 0; matched by id, not by order) and 1, 0 (seed 1): mean 1/3,
    # s^2 = (2 (2/3)^2 + 4 (1/3)^2) / 5 = 4/15, half = t(0.975, 5) * s / sqrt(6) = 2.5706 * 0.5164 / 2.4495
    assert d["n"] == 6 and abs(d["mean"] - 1 / 3) < 1e-12
    assert abs(d["half"] - 2.5706 * (4 / 15) ** 0.5 / 6**0.5) < 1e-3
    assert d["same"] == 3  # b, d and f are word for word base's


def test_episodes_pair_only_within_a_seed_and_an_evaluation_file(tmp_path):
    write_cell(tmp_path, "base-s0", [("a/0", 0.0, "x")])
    write_cell(tmp_path, "sft-s1", [("a/0", 1.0, "x")])  # another training seed
    write_cell(tmp_path, "dpo-s0", [("a/0", 1.0, "x")], file="episodes-s7.jsonl")  # other sampling seeds
    assert paired_difference(tmp_path, "sft", [0, 1]) is None
    assert paired_difference(tmp_path, "dpo", [0]) is None
    assert paired_lines(tmp_path, ["base", "sft", "dpo"], [0, 1]) == []


def test_lines_name_the_method_the_difference_and_what_the_interval_is_over(tmp_path):
    write_cell(tmp_path, "base-s0", [("a/0", 0.0, "x"), ("b/0", 0.5, "y")])
    write_cell(tmp_path, "swift-s0", [("a/0", 0.0, "x"), ("b/0", 0.0, "y2")])
    lines = paired_lines(tmp_path, ["base", "swift", "refit"], [0])
    assert lines[0].startswith("swift - base on reward, paired: -0.250 ± ")
    assert lines[0].endswith("over 2 evaluation episodes (1 word for word base's)")
    assert len(lines) == 2 and "not over training seeds" in lines[1]
    assert paired_lines(tmp_path, ["swift"], [0], reference="sft") == []  # no reference cell: nothing
