"""
The toy math task: two-digit addition, in the R1-Zero prompt template.

A problem is a dict {"prompt": "Compute 82 + 97", "answer": "179", "a": 82, "b": 97}; the reward
functions get its fields. The test set is drawn from its own seed and removed from everything
trained on.

The base-model corpus is the miniature of a pretrained LM that can reason but rarely does:

    textbook  (no template) the question, then always the worked sum: where the skill is learned
        User: Compute 82 + 97. Assistant: <think> Compute 82 + 97 in columns. 2+7=9, so 9.
        8+9=17, so 79, carry 1. Carry 1 left, so 179. </think> <answer> 179 </answer>
    corpus    (in the template, asked exactly as RL and the test ask) one of three styles:
        direct  (most documents) a one-shot guess, right only `guess_acc` of the time, half of the
                time without <think> tags (so the format reward has work to do):
                    <think> I know this one. </think> <answer> 189 </answer>
        worked  the worked sum above: long, and right
        reflect a guess, then "Wait, let me recheck." and the worked sum (the "aha" of the paper)

Asked in the template, a model trained on this corpus mostly guesses, so it is weak but not
hopeless; RL can only raise accuracy by shifting probability to the long worked styles, so
response length grows as accuracy rises: the R1-Zero signature, by design of the corpus. What is
simplified: the paper's base model learned to reason from web-scale text and followed the
template zero-shot; here the template is in the corpus so a 1M-parameter model can follow it.
Operands have a fixed number of digits by default: column k is then the k-th digit of both
operands from the left as well as from the right, which a tiny model learns to look up several
times faster than mixed lengths (three-digit sums take it longer than the whole CPU budget).

    python tasks.py     # prints a few corpus documents
"""

import random

# Table 1 of the paper; {prompt} is replaced with the question
TEMPLATE = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user "
    "with the answer. The reasoning process and answer are enclosed within <think> </think> and "
    "<answer> </answer> tags, respectively, i.e., <think> reasoning process here </think> "
    "<answer> answer here </answer>. User: {prompt}. Assistant:")


# the template's instruction, without the "User: ... Assistant:" turns, as a chat model's system message
SYSTEM = TEMPLATE.split(" User:")[0]
# chat formats of instruct models: the instruction as the system message, the question as the
# user's turn, and the assistant's turn opened (what the tokenizer's own chat template renders)
CHAT = {
    "chatml": "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n",
    "llama3": ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>"
               "<|start_header_id|>user<|end_header_id|>\n\n{prompt}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"),
}


def render_prompt(question: str, chat: str | None = None) -> str:
    """The R1-Zero prompt for a question: Table 1's template for a base model (chat=None), or the
    same instruction and question in an instruct model's chat format ("chatml", "llama3")."""
    if chat is None:
        return TEMPLATE.format(prompt=question)
    if chat not in CHAT:
        raise ValueError(f"unknown chat format '{chat}': use one of {', '.join(CHAT)} (or none for the R1-Zero template)")
    return CHAT[chat].format(system=SYSTEM, prompt=question)


class AdditionTask:
    """a + b, each operand with min_digits..max_digits digits (1-digit operands include 0)."""

    def __init__(self, min_digits=2, max_digits=2, n_test=200, seed=0,
                 style_weights=(0.75, 0.17, 0.08), guess_acc=0.2):
        if not 1 <= min_digits <= max_digits:
            raise ValueError(f"need 1 <= min_digits <= max_digits, got {min_digits}, {max_digits}")
        self.min_digits, self.max_digits = min_digits, max_digits
        n_operands = 10 ** max_digits - (10 ** (min_digits - 1) if min_digits > 1 else 0)
        if n_test > n_operands ** 2 // 2:
            raise ValueError(f"n_test={n_test} would hold out more than half of the {n_operands ** 2} problems: lower it")
        self.style_weights, self.guess_acc = style_weights, guess_acc
        self.seed = seed
        rng = random.Random(f"test-{seed}")
        test, seen = [], set()
        while len(test) < n_test:
            p = self._draw(rng)
            if p["prompt"] not in seen:
                seen.add(p["prompt"])
                test.append(p)
        self.test_set, self._test_prompts = test, seen

    def _draw(self, rng: random.Random) -> dict:
        a, b = (rng.randint(10 ** (n - 1) if n > 1 else 0, 10 ** n - 1)
                for n in (rng.randint(self.min_digits, self.max_digits) for _ in range(2)))
        return {"prompt": f"Compute {a} + {b}", "answer": str(a + b), "a": a, "b": b}

    def train_problems(self, rng: random.Random, n: int) -> list[dict]:
        """n problems that are not in the test set."""
        out = []
        while len(out) < n:
            p = self._draw(rng)
            if p["prompt"] not in self._test_prompts:
                out.append(p)
        return out

    # --- the base-model corpus ---

    def guess(self, p: dict, rng: random.Random) -> str:
        """A one-shot answer: right with probability guess_acc, else one digit off."""
        ans = p["answer"]
        if rng.random() < self.guess_acc:
            return ans
        i = rng.randrange(len(ans))
        wrong = rng.choice([d for d in "0123456789" if d != ans[i] and (i > 0 or d != "0")] or ["1"])
        return ans[:i] + wrong + ans[i + 1:]

    @staticmethod
    def worked(p: dict) -> str:
        """Column addition from the right, writing the partial sum as it grows. It opens by restating
        the question word for word: a copy that even a tiny model learns quickly (zero-padding
        the operands, or starting the copy right after <think>, which the template also uses, made
        it fail to learn the copy in our runs)."""
        a, b = p["a"], p["b"]
        n = max(len(str(a)), len(str(b)))
        da, db = str(a).zfill(n), str(b).zfill(n)  # a missing digit is written as 0
        steps, partial, carry = [f"Compute {a} + {b} in columns."], "", 0
        for x, y in zip(reversed(da), reversed(db)):
            s = int(x) + int(y) + carry
            partial = str(s % 10) + partial
            step = f"{x}+{y}{'+1' if carry else ''}={s}, so {partial}"
            carry = s // 10
            steps.append(step + (", carry 1." if carry else "."))
        if carry:
            steps.append(f"Carry 1 left, so 1{partial}.")
        return " ".join(steps)

    def completion(self, p: dict, rng: random.Random, style_weights=None) -> str:
        """One corpus completion for problem p (starts with a space, as after 'Assistant:')."""
        style = rng.choices(["direct", "worked", "reflect"], weights=style_weights or self.style_weights)[0]
        if style == "worked":
            return f" <think> {self.worked(p)} </think> <answer> {p['answer']} </answer>"
        guess = self.guess(p, rng)
        if style == "reflect":
            return (f" <think> It is about {guess}. Wait, let me recheck. {self.worked(p)} </think>"
                    f" <answer> {p['answer']} </answer>")
        if rng.random() < 0.5:
            return f" <answer> {guess} </answer>"
        return f" <think> I know this one. </think> <answer> {guess} </answer>"

    def corpus(self, n: int, seed: int, style_weights=None) -> list[tuple[str, str]]:
        """n templated documents, none from the test set, asked as the RL and test prompts are and
        answered in the style mixture (or in style_weights): here the model learns to rarely use
        the skill."""
        rng = random.Random(f"corpus-{seed}-{style_weights}")
        return [(render_prompt(p["prompt"]), self.completion(p, rng, style_weights)) for p in self.train_problems(rng, n)]

    def textbook(self, n: int, seed: int) -> list[tuple[str, str]]:
        """n documents without the template, none from the test set, always answered by the worked
        sum: here the model learns the skill. Short documents are where a tiny model learns it
        quickly: behind the ~380-token template attention starts spread over every template token,
        and the copy the worked sum needs forms far later."""
        rng = random.Random(f"textbook-{seed}")
        return [(f"User: {p['prompt']}. Assistant:", f" <think> {self.worked(p)} </think> <answer> {p['answer']} </answer>")
                for p in self.train_problems(rng, n)]


if __name__ == "__main__":
    task = AdditionTask()
    for prompt, completion in task.textbook(2, seed=0) + task.corpus(6, seed=0):
        print("..." + prompt[-32:] + completion, end="\n\n")
