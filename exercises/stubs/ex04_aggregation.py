"""
Exercise 4: the three aggregations of the per-token terms, and the length-bias question (the
project's version: grpo.py, loss_normalizer; eq. 1 with DAPO's and Dr. GRPO's variants).

eq. 1 averages each output's tokens, then the outputs. Later work changed what the summed
per-token objective is divided by. Fill in the function and the constant, then:
python -m exercises check 4
"""


def loss_normalizer(loss_type, mask, max_len=None):
    """
    What the summed per-token objective of one optimisation step is divided by, as a float.

    mask: (B, T) of 0/1, 1 on the completion tokens of B outputs (padded to T).
      "grpo"     the number of outputs B (each output's own token mean is then summed: eq. 1)
      "token"    the number of completion tokens, mask.sum() (DAPO: every token weighs the same)
      "dr_grpo"  B * max_len, a constant: the generation budget (Dr. GRPO); max_len None means T
      anything else: raise ValueError naming loss_type.
    """
    raise NotImplementedError  # TODO


# The length-bias question. One group, two wrong outputs (advantage -1 each) at rho = 1: one of 2
# tokens, one of 10. Under loss_type "grpo" (eq. 1: a mean over each output's tokens), how many
# times larger is the gradient on one token of the short output than on one token of the long
# one? And under "token" (DAPO)? Replace None with the numbers.
SHORT_OVER_LONG_GRPO = None
SHORT_OVER_LONG_TOKEN = None
