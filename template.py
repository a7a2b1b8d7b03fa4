"""
The prompt: the R1-Zero template (Table 1 of the paper), and the same instruction in an instruct
model's chat format. Every prompt the project writes, for rollouts, evaluation, SFT data and the
base corpus, is rendered here, so the sampler, the trainer and the data agree on it.

A base model reads Table 1 as plain text and continues after "Assistant:". An instruct model
expects its chat format: the instruction becomes the system message, the question the user's
turn, and the assistant's turn is opened (what its tokenizer's own chat template renders).
Worked examples (`--shots`, tasks/shots.py) go before the question as earlier exchanges.
The tokenizer carries which one its model wants (`tok.chat`: None for Table 1, or a key of CHAT);
the `--chat` flag of every CLI picks another (`chat_format`). Left out: rendering a tokenizer's
own Jinja chat template (the two formats here are written out; an instruct model of another
family needs its format added to CHAT).

A tool call inside the thought (engines/tools.py) is written in ToRL's format, `TOOL`: a fenced
```python block, which the policy closes, answered by a fenced ```output block, which it does not
write (the toy corpus of tasks/multiply.py writes both, so that the two agree to the byte).

    python template.py "Compute 82 + 97"              # prints the R1-Zero prompt
    python template.py "Compute 82 + 97" chatml
"""

import sys

# Table 1 of the paper; {prompt} is replaced with the question
TEMPLATE = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant "
    "solves it. The assistant first thinks about the reasoning process in the mind and then "
    "provides the user with the answer. The reasoning process and answer are enclosed within "
    "<think> </think> and <answer> </answer> tags, respectively, i.e., <think> reasoning process "
    "here </think> <answer> answer here </answer>. User: {prompt}. Assistant:")

# the template's instruction, without the "User: ... Assistant:" turns,
# as a chat model's system message
SYSTEM = TEMPLATE.split(" User:")[0]
CHAT = {
    "chatml": ("<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{prompt}<|im_end|>\n"
               "<|im_start|>assistant\n"),
    "llama3": ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>"
               "<|start_header_id|>user<|end_header_id|>\n\n{prompt}<|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\n"),
}
# a worked example (tasks/shots.py) is an earlier exchange, inserted where the question's turn
# starts (USER): a user turn and the assistant's whole answer
USER = {None: " User:", "chatml": "<|im_start|>user\n", "llama3": "<|start_header_id|>user"}
SHOT = {None: " User: {prompt}. Assistant: {completion}",
        "chatml": ("<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
                   "{completion}<|im_end|>\n"),
        "llama3": ("<|start_header_id|>user<|end_header_id|>\n\n{prompt}<|eot_id|>"
                   "<|start_header_id|>assistant<|end_header_id|>\n\n{completion}<|eot_id|>")}
# a tool call (ToRL's format): the policy writes `open`, code, `close`; the interpreter's output
# comes back as `output`. close ends in a newline, so the output block starts a piece of its own
# for any tokenizer
TOOL = dict(open="```python\n", close="\n```\n", output="```output\n{}\n```\n")

# the --chat flag's values: auto keeps the tokenizer's own format, none is Table 1
CHAT_FLAGS = ["auto", "none", *CHAT]


def render_prompt(question: str, chat: str | None = None, shots=()) -> str:
    """The R1-Zero prompt for a question: Table 1's template for a base model (chat=None), or the
    same instruction and question in an instruct model's chat format ("chatml", "llama3"); shots,
    worked examples [(question, completion)], go before the question as earlier exchanges."""
    if chat is None:
        text = TEMPLATE.format(prompt=question)
    elif chat in CHAT:
        text = CHAT[chat].format(system=SYSTEM, prompt=question)
    else:
        raise ValueError(f"unknown chat format '{chat}': use one of {', '.join(CHAT)} "
                         f"(or none for the R1-Zero template)")
    if not shots:
        return text
    i = text.index(USER[chat])  # where the question's turn starts: the examples go before it
    examples = "".join(SHOT[chat].format(prompt=q, completion=c) for q, c in shots)
    return text[:i] + examples + text[i:]


def chat_format(flag: str, own: str | None) -> str | None:
    """The prompt format a --chat flag asks for, given the tokenizer's own (`own`): auto keeps it,
    none is Table 1 (None), a format's name is that format."""
    return own if flag == "auto" else None if flag == "none" else flag


if __name__ == "__main__":
    print(render_prompt(sys.argv[1] if len(sys.argv) > 1 else "Compute 82 + 97",
                        sys.argv[2] if len(sys.argv) > 2 else None))
