import pytest

from rewards import accuracy_reward, format_reward, rule_reward

GOOD = "<think> 1+7=8, so 8. </think> <answer> 8 </answer>"


@pytest.mark.parametrize("text, fmt", [
    (GOOD, 1.0),
    ("  \n<think>x</think>\n<answer>8</answer>\n", 1.0),          # whitespace and newlines outside are fine
    ("<think></think><answer>8</answer>", 1.0),                    # an empty thought is still the format
    ("<answer>8</answer>", 0.0),                                    # no think block
    ("<think>x</think>", 0.0),                                      # no answer block
    ("<think>x</think> <answer> </answer>", 0.0),                  # empty answer
    ("<answer>8</answer> <think>x</think>", 0.0),                  # wrong order
    ("<think>x</think> <answer>8</answer></answer>", 0.0),         # repeated closing tag
    ("<think>x</think> <answer>8</answer> <answer>9</answer>", 0.0),  # two answers
    ("<think>x <think> y</think> <answer>8</answer>", 0.0),        # nested think
    ("so: <think>x</think> <answer>8</answer>", 0.0),              # text outside the tags
    ("<think>x</think> <answer>8</answer> trailing", 0.0),
    ("", 0.0),
])
def test_format_reward(text, fmt):
    assert format_reward([""], [text]) == [fmt]


@pytest.mark.parametrize("text, answer, acc", [
    (GOOD, "8", 1.0),
    ("<think>x</think> <answer>  42  </answer>", "42", 1.0),        # spaces around the answer
    ("<think>x</think> <answer>0042</answer>", "42", 1.0),          # leading zeros: same value
    ("<answer>42</answer>", "42", 1.0),                             # accuracy does not need the format
    ("<think>x</think> <answer>4 2</answer>", "42", 0.0),           # spaces inside: not a number
    ("<think>x</think> <answer>0.50</answer>", "1/2", 1.0),         # compared by value
    ("<think>x</think> <answer>-7</answer>", "-7", 1.0),
    ("<think>x</think> <answer>43</answer>", "42", 0.0),
    ("<think>x</think> <answer>42</answer></answer>", "42", 0.0),   # repeated </answer> never pays
    ("<answer>41</answer> <answer>42</answer>", "42", 0.0),         # two answers never pay
    ("<think><answer>42</answer></think>", "42", 1.0),              # hidden in think: the one answer block counts
    ("<think>x</think> <answer></answer>", "42", 0.0),
    ("<think>42</think>", "42", 0.0),                               # no answer block
    ("<think>x</think> <answer>1/0</answer>", "42", 0.0),           # no crash on a zero denominator
    ("<think>x</think> <answer>٤٢</answer>", "42", 0.0),            # unicode digits are not ASCII digits
    ("<think>x</think> <answer>forty-two</answer>", "42", 0.0),
])
def test_accuracy_reward(text, answer, acc):
    assert accuracy_reward([""], [text], answer=[answer]) == [acc]


def test_rule_reward_is_equal_weight_sum():
    texts = [GOOD, "<answer>8</answer>", "<think>x</think> <answer>9</answer>", "junk"]
    assert rule_reward([""] * 4, texts, answer=["8"] * 4) == [2.0, 1.0, 1.0, 0.0]


# --- eq. 7 and the reward convention ---

@pytest.mark.parametrize("thought, language, share", [
    ("Compute 12 + 34 in columns. Wait, let me recheck.", "en", 1.0),
    ("Le café est prêt", "en", 1.0),                  # Latin script, accents included
    ("计算 so carry", "en", 2 / 4),                   # each CJK character is a word: 2 of them, 2 Latin words
    ("计算 so carry", "zh", 2 / 4),
    ("Считаем so", "en", 1 / 2),                      # Cyrillic is not the target script
    ("12+34=46, 7*8", "en", None),                    # no word at all: declined, not 0
])
def test_language_share(thought, language, share):
    from rewards import language_share
    got = language_share(thought, language)
    assert got == share if share is None else got == pytest.approx(share)


def test_language_reward_reads_only_the_chain_of_thought():
    from rewards import language_reward
    texts = ["<think> add the units </think> <answer> 计算 </answer>", "<think> 计算 </think> <answer> 7 </answer>",
             "<answer> 7 </answer>", "<think> 3+4 </think> <answer> 7 </answer>"]
    assert language_reward(None, texts) == [1.0, 0.0, 0.0, None]
    assert language_reward(None, texts[:2], language=["zh", "zh"]) == [0.0, 1.0]


def test_parse_rewards_builtins_user_functions_and_errors(tmp_path, monkeypatch):
    from rewards import accuracy_reward, parse_rewards
    (tmp_path / "my_rewards.py").write_text(
        "def brevity(prompts, completions, **fields):\n"
        "    return [None if not c else 1.0 / len(c) for c in completions]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = parse_rewards("accuracy:1, my_rewards.brevity:0.5")
    assert [(n, w) for n, _, w in spec] == [("accuracy", 1.0), ("my_rewards.brevity", 0.5)]
    assert spec[0][1] is accuracy_reward and spec[1][1](None, ["ab", ""]) == [0.5, None]
    for bad, message in (("accuracy", "name:weight"), ("acc:1", "unknown reward 'acc'"),
                         ("format:heavy", "not a number"), ("no_such_module.f:1", "cannot be loaded")):
        with pytest.raises(ValueError, match=message):
            parse_rewards(bad)


# --- math answers: boxed, LaTeX, by value ---

@pytest.mark.parametrize("text, answer, acc", [
    (r"<think>x</think> <answer> so \boxed{\frac{1}{2}} </answer>", "0.5", 1.0),
    (r"<think>x</think> <answer> \dfrac{3}{4} </answer>", "3/4", 1.0),
    (r"<think>x</think> <answer> -\frac{3}{4} </answer>", "-0.75", 1.0),
    (r"<think>x</think> <answer> $1,234$ </answer>", "1234", 1.0),
    (r"<think>x</think> <answer> 2\sqrt{2} </answer>", r"\sqrt{8}", 1.0),
    (r"<think>x</think> <answer> \sqrt{2} </answer>", r"\sqrt{3}", 0.0),
    (r"the answer is \boxed{7}", "7", 1.0),                         # no tags: the last box
    (r"<think>\boxed{7}</think> nothing else", "7", 0.0),          # a box hidden in the thought
    (r"<answer>\boxed{6}</answer> \boxed{7}", "7", 0.0),           # the answer block wins
    (r"<think>x</think> <answer> \frac{1}{0} </answer>", "1", 0.0),
    (r"<think>x</think> <answer> \boxed{1e999} </answer>", "1", 0.0),
    (r"<think>x</think> <answer> 1,23 </answer>", "123", 0.0),     # not a thousands separator
])
def test_math_answers_by_value(text, answer, acc):
    assert accuracy_reward([""], [text], answer=[answer]) == [acc]


# --- Countdown ---

@pytest.mark.parametrize("expr, reward", [
    ("(25 - 5) * 4 + 2", 1.0),
    ("2 + 4 * (25 - 5)", 1.0),       # any order, any parentheses
    ("(25 - 5) * 4", 0.0),           # a number unused
    ("(25 - 5) * 4 + 2 + 2", 0.0),   # a number used twice
    ("(25 - 5) * 4 + 3", 0.0),       # a number not given
    ("25 / (5 - 5) + 4 + 2", 0.0),   # division by zero: no crash
    ("2 ** 4 + 25 - 5", 0.0),        # powers are not allowed
    ("__import__('os').system('id')", 0.0),
    ("(25 - 5) * 4 + 2; x", 0.0),
    ("(" * 500 + "2", 0.0),
    ("", 0.0),
])
def test_countdown_reward(expr, reward):
    from rewards import countdown_reward
    text = f"<think>x</think> <answer> {expr} </answer>"
    assert countdown_reward([""], [text], numbers=[[25, 5, 4, 2]], target=[82]) == [reward]


# --- code ---

def test_code_reward_scores_the_share_of_tests_passed():
    from rewards import code_reward
    tests = [{"input": "2 3\n", "output": "5\n"}, {"input": "10 -4\n", "output": "6"}, {"input": "1 1\n", "output": "3\n"}]
    right = "<think>x</think> <answer>\n```python\na, b = map(int, input().split())\nprint(a + b)\n```\n</answer>"
    loop = "<think>x</think> <answer>\n```python\nwhile True: pass\n```\n</answer>"
    t0 = __import__("time").time()
    assert code_reward([""] * 4, [right, loop, "no answer", ""], tests=[tests] * 4, timeout=1.0) == [2 / 3, 0.0, 0.0, 0.0]
    assert __import__("time").time() - t0 < 10


# --- every built-in against what a policy under RL will try ---

HOSTILE = ["", "x" * 100_000, "<answer>1</answer><answer>1</answer>", "<think>x</think> <answer>1</answer></answer>",
           "<think><answer>1</answer></think>", "<think>x</think> <answer>١</answer>", "<think>x</think> <answer>1e999</answer>",
           "<think>x</think> <answer>1/0</answer>", "<answer>" * 1000, "\\boxed{" * 1000]


@pytest.mark.parametrize("name", ["accuracy", "format", "language", "countdown", "code"])
def test_every_builtin_gives_a_defined_reward_on_hostile_text(name):
    import time

    from rewards import REWARDS
    fields = {"answer": ["1"] * len(HOSTILE), "numbers": [[1, 0]] * len(HOSTILE), "target": [1] * len(HOSTILE),
              "tests": [[{"input": "", "output": "1"}]] * len(HOSTILE)}
    t0 = time.time()
    out = REWARDS[name]([""] * len(HOSTILE), HOSTILE, **fields)
    assert time.time() - t0 < 20
    assert len(out) == len(HOSTILE) and all(r is None or 0.0 <= r <= 1.0 for r in out)
    if name in ("accuracy", "countdown", "code"):
        assert out[:3] == [0.0, 0.0, 0.0]  # nothing, noise, two answers: never paid
