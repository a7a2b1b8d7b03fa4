"""
Exercise 12: the tool-output mask of a multi-turn row (the project's version: engines/tools.py,
assemble).

With tool calls a rollout is multi-turn: the policy samples, pauses on a call, the interpreter's
output is appended, the policy samples again. The trainer sees one row of tokens, but only the
sampled ones are the policy's choices: the tool's output must be context for the tokens after it
and carry no loss, no KL and no ratio. Build the row and its mask; the check then trains through
your mask and looks for gradient on tool tokens. Fill in the body, then:
python -m exercises check 12
"""


def assemble(turns):
    """
    turns: the row's turns in order, each (ids, logps): the token ids the policy sampled and their
           sampler log-probs (a list of floats, one per id), or (ids, None) for a tool's output.
    Returns (ids, logps, tool), three lists of one length: every turn's ids one after the other,
    the sampler's log-prob of each token (0.0 on a tool-output token: nothing sampled it), and
    tool[t] True exactly on tool-output tokens. A turn may be empty.
    """
    raise NotImplementedError  # TODO
