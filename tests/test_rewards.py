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
